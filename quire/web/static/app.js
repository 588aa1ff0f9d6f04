// quire web: the live parts. Pages are complete without this script; it only
// follows a running run (or the runs list) over server-sent events.
(function () {
  "use strict";
  var url = document.body.dataset.live;
  if (!url || !window.EventSource) return;
  var status = document.getElementById("live-status");
  var MAX_NODES = 20000; // keep the page responsive however much a job prints

  function setStatus(text, on) {
    if (!status) return;
    status.textContent = text;
    status.className = on ? "muted on" : "muted";
  }

  function section(job) {
    var all = document.querySelectorAll("section.joblog");
    for (var i = 0; i < all.length; i++) if (all[i].dataset.job === job) return all[i];
    var logs = document.getElementById("logs");
    if (!logs) return null;
    var s = document.createElement("section");
    s.className = "joblog";
    s.dataset.job = job;
    s.dataset.offset = "0";
    var h = document.createElement("h3");
    h.textContent = job;
    var pre = document.createElement("pre");
    pre.className = "log";
    s.appendChild(h);
    s.appendChild(pre);
    logs.appendChild(s);
    return s;
  }

  function offsets() {
    var map = {};
    document.querySelectorAll("section.joblog").forEach(function (s) {
      map[s.dataset.job] = parseInt(s.dataset.offset || "0", 10);
    });
    return map;
  }

  function onOutput(e) {
    var data = JSON.parse(e.data);
    var s = section(data.job);
    if (!s) return;
    var pre = s.querySelector("pre.log");
    var follow = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    pre.insertAdjacentHTML("beforeend", data.html);
    while (pre.childNodes.length > MAX_NODES) pre.removeChild(pre.firstChild);
    s.dataset.offset = String(data.offset);
    if (follow) pre.scrollTop = pre.scrollHeight;
  }

  function setState(state) {
    var badge = document.getElementById("run-state");
    if (badge && state) {
      badge.textContent = state;
      badge.className = "state " + state;
    }
  }

  function connect() {
    var target = url;
    if (document.querySelector("section.joblog")) {
      target += (url.indexOf("?") < 0 ? "?" : "&") + "offsets=" + encodeURIComponent(JSON.stringify(offsets()));
    }
    var source = new EventSource(target);
    source.onopen = function () { setStatus("live", true); };
    source.addEventListener("output", onOutput);
    source.addEventListener("jobs", function (e) {
      var data = JSON.parse(e.data);
      var body = document.getElementById("jobs");
      if (body) body.innerHTML = data.html;
      var facts = document.getElementById("facts");
      if (facts && data.facts) facts.innerHTML = data.facts;
      // A job's page: its own badge and facts (the run's are not on it).
      var jobFacts = document.getElementById("job-facts");
      if (jobFacts && data.job_facts) jobFacts.innerHTML = data.job_facts;
      var jobBadge = document.getElementById("job-state");
      if (jobBadge && data.job_state) {
        jobBadge.textContent = data.job_state;
        jobBadge.className = "state " + data.job_state;
      }
      setState(data.state);
    });
    source.addEventListener("runs", function (e) {
      var body = document.getElementById("runs");
      if (body) body.innerHTML = JSON.parse(e.data).html;
    });
    source.addEventListener("end", function (e) {
      source.close();
      setState(JSON.parse(e.data).state);
      setStatus("finished", false);
    });
    source.onerror = function () {
      // Reconnect ourselves, from the offsets the page has shown so far.
      source.close();
      setStatus("reconnecting…", false);
      window.setTimeout(connect, 1000);
    };
  }
  connect();
})();
