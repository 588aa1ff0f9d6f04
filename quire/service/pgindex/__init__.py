"""The run index and the runs' logs on PostgreSQL: every worker's runs, readable anywhere.

    CREATE SEQUENCE run_change;           -- numbers every change, in commit order
    CREATE TABLE run_index (run_id PRIMARY KEY, repo, git_dir, worker, state_dir,
                            state,        -- a RunState value, or 'pruned'
                            seq);         -- its last change
    CREATE TABLE run_file (seq PRIMARY KEY, run_id REFERENCES run_index,
                           path,          -- relative to the run's directory
                           kind,          -- whole | append | delete
                           at, data,      -- append: data goes at byte `at`
                           digest);       -- whole: sha256 of the whole file

    writer.py     IndexWriter: the SQL that ships changes, marks lost runs, prunes
    publisher.py  Publisher: on a worker, ships its runs' directories as they change
    reader.py     sync() and Follower: a reader's mirror (quire.ci.store.mirror) kept
                  current; lease_alive(): whether a mirrored run's worker still holds it

Publishers take one advisory lock per batch, so the sequence's numbers are
committed in order and a reader resumes from the last number it applied.
Each batch ends with `NOTIFY quire_runs`; followers LISTEN.
"""
