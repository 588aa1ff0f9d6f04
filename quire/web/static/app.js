// quire web: the live parts. Pages are complete without this script; it follows a
// running run (or the runs list) over server-sent events, keeps a log scrolled to its
// end while the reader is there, ticks the elapsed time of what is running, and
// shows or hides the lines' times without a reload.
(function () {
  "use strict";
  var MAX_NODES = 20000; // keep the page responsive however much a job prints
  var NEAR_END_PX = 8;

  // --- a log follows its end while the reader is at the end --------------------------

  function atEnd(pre) {
    return pre.scrollTop + pre.clientHeight >= pre.scrollHeight - NEAR_END_PX;
  }

  function follow(pre) {
    pre.dataset.follow = "1";
    pre.addEventListener("scroll", function () {
      // Scrolling up stops following; scrolling back to the end resumes it.
      pre.dataset.follow = atEnd(pre) ? "1" : "0";
    });
  }

  function toEnd(pre) {
    if (pre.dataset.follow !== "0") pre.scrollTop = pre.scrollHeight;
  }

  document.querySelectorAll("section.joblog pre.log").forEach(function (pre) {
    follow(pre);
    if (pre.parentNode.dataset.tail === "1") pre.scrollTop = pre.scrollHeight;
  });

  // --- elapsed time of what is running --------------------------------------------

  function elapsedText(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " m " + pad(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + pad(Math.floor((s % 3600) / 60)) + " m";
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll(".elapsed[data-since]").forEach(function (span) {
      var since = Date.parse(span.dataset.since);
      if (!isNaN(since)) span.textContent = elapsedText((now - since) / 1000);
    });
  }
  tick();
  window.setInterval(tick, 1000);

  // --- times of the lines, shown or hidden in place -------------------------------

  document.querySelectorAll("a.times-toggle").forEach(function (link) {
    link.addEventListener("click", function (e) {
      e.preventDefault();
      var shown = document.body.classList.toggle("times");
      document.querySelectorAll("a.times-toggle").forEach(function (other) {
        other.textContent = (shown ? "hide" : "show") + " times";
      });
      var query = new URLSearchParams(window.location.search);
      if (shown) query.set("times", "1"); else query.delete("times");
      var search = query.toString();
      window.history.replaceState(null, "", window.location.pathname + (search ? "?" + search : ""));
    });
  });

  // --- live updates ---------------------------------------------------------------

  var url = document.body.dataset.live;
  if (!url || !window.EventSource) return;
  var status = document.getElementById("live-status");

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
    follow(pre);
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
    pre.insertAdjacentHTML("beforeend", data.html);
    while (pre.childNodes.length > MAX_NODES) pre.removeChild(pre.firstChild);
    s.dataset.offset = String(data.offset);
    toEnd(pre);
  }

  function setBadge(id, state) {
    var badge = document.getElementById(id);
    if (badge && state) {
      badge.textContent = state;
      badge.className = "state " + state;
    }
  }

  function replace(id, html) {
    var node = document.getElementById(id);
    if (node && typeof html === "string") node.innerHTML = html;
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
      replace("jobs", data.html);
      replace("facts", data.facts);
      replace("job-facts", data.job_facts);
      setBadge("job-state", data.job_state);
      setBadge("run-state", data.state);
      tick();
    });
    source.addEventListener("runs", function (e) {
      replace("runs", JSON.parse(e.data).html);
      tick();
    });
    source.addEventListener("end", function (e) {
      source.close();
      setBadge("run-state", JSON.parse(e.data).state);
      // An ended run cannot be cancelled: its button goes with the page's "running".
      document.querySelectorAll(".actions form[action$='/cancel']").forEach(function (form) {
        form.remove();
      });
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
