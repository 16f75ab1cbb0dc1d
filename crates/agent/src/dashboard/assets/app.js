// Rollway dashboard: live updates over the agent's server-sent events. No build step, no library.
// - Pages with data-live="SCOPE:AFTER" follow the audit log from event AFTER; an event of SCOPE
//   ("all", or "app/env") re-reads this page and swaps its <main>, so a deployment's steps,
//   its state, the charts and the buttons are always the server's rendering.
// - The logs page appends each line of its stream as it arrives (of one instance when it shows one).
"use strict";
(function () {
  function follow(live) {
    var cut = live.lastIndexOf(":");
    var scope = live.slice(0, cut);
    var after = live.slice(cut + 1);
    var pending = null;
    var source = new EventSource("/events/stream?after=" + encodeURIComponent(after));
    source.addEventListener("event", function (message) {
      var event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      if (scope !== "all" && event.app + "/" + event.environment !== scope) { return; }
      if (pending) { return; }
      pending = setTimeout(function () { pending = null; refresh(); }, 150);
    });
  }

  var refreshing = false;
  var again = false;
  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.redirected || !response.ok) { return null; }
        return response.text();
      })
      .then(function (text) {
        if (text === null) { return; }
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("main");
        var main = document.getElementById("main");
        if (!fresh || !main) { return; }
        // Keep keyboard focus where it was when the same element is still there.
        var focused = document.activeElement && document.activeElement.id;
        main.innerHTML = fresh.innerHTML;
        if (focused) {
          var again = document.getElementById(focused);
          if (again) { again.focus(); }
        }
        document.body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () {})
      .then(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }

  function tail(log) {
    var source = new EventSource(log.getAttribute("data-stream"));
    source.addEventListener("log", function (message) {
      var line;
      try { line = JSON.parse(message.data); } catch (e) { return; }
      var only = log.getAttribute("data-instance");
      if (only && line.instance_id !== only) { return; }
      var row = document.createElement("span");
      row.className = "line";
      var instance = document.createElement("span");
      instance.className = "instance";
      instance.textContent = line.instance_id;
      row.appendChild(instance);
      row.appendChild(document.createTextNode(" " + line.line + "\n"));
      var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.appendChild(row);
      while (log.childNodes.length > 2000) { log.removeChild(log.firstChild); }
      if (atBottom) { log.scrollTop = log.scrollHeight; }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.body.getAttribute("data-live");
    if (live) { follow(live); }
    var log = document.getElementById("log");
    if (log) { tail(log); }
  });
})();
