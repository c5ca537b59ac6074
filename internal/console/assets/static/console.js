// auditflow console: live updates. The server pushes, as Server-Sent
// Events, the rows each store write added; this lists them in the Live
// panel (as text, never as markup) and refetches the page to swap its
// <main> with the server's freshly rendered (escaped) one. No inline
// script anywhere: the Content-Security-Policy allows only this file.
"use strict";
(function () {
  var url = document.body.dataset.live;
  var status = document.getElementById("live");
  var feed = document.getElementById("feed");
  if (!url || !window.EventSource || !status) {
    return;
  }
  var refreshing = false, again = false;
  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (res) { return res.ok ? res.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.querySelector("main"), cur = document.querySelector("main");
        if (fresh && cur) { cur.replaceWith(document.adoptNode(fresh)); }
      })
      .catch(function () {})
      .finally(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }
  var es = new EventSource(url);
  es.addEventListener("hello", function (ev) {
    var d = JSON.parse(ev.data);
    status.textContent = d.status;
    status.className = d.status === "live" ? "live on" : "live off";
  });
  es.addEventListener("execution", function (ev) {
    var d = JSON.parse(ev.data);
    // The rows come newest first: add the oldest first, so the newest ends on top.
    (d.events || []).slice().reverse().forEach(function (e) {
      var li = document.createElement("li");
      li.textContent = e.pipeline + " / " + e.changeId + " " + e.state + (e.mark ? " (" + e.mark + ")" : "") + " (seq " + e.seq + ")";
      feed.insertBefore(li, feed.firstChild);
    });
    while (feed.children.length > 20) { feed.removeChild(feed.lastChild); }
    refresh();
  });
  es.onerror = function () {
    status.textContent = "reconnecting…";
    status.className = "live off";
  };
})();
