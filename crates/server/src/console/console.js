// gosok console: live updates. The page's <main> names the page it shows (data-live) and a
// fingerprint of what it shows (data-hash); the server sends the page's new <main> over
// Server-Sent Events whenever it renders differently. While a field inside <main> has the
// focus, an update waits until the focus leaves it, so nothing typed is lost.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || !main.dataset.live || !window.EventSource) return;
  var url = "/console/live?path=" + encodeURIComponent(main.dataset.live) +
    "&since=" + encodeURIComponent(main.dataset.hash || "");
  var waiting = null;
  function editing() {
    var a = document.activeElement;
    return a && main.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName);
  }
  function apply(html) {
    var log = document.getElementById("log");
    var atEnd = log && log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    main.innerHTML = html;
    main.dataset.updated = String(Date.now());
    log = document.getElementById("log");
    if (log && atEnd) log.scrollTop = log.scrollHeight;
  }
  var es = new EventSource(url);
  es.addEventListener("main", function (e) {
    if (editing()) { waiting = e.data; return; }
    waiting = null;
    apply(e.data);
  });
  main.addEventListener("focusout", function () {
    setTimeout(function () {
      if (waiting !== null && !editing()) { apply(waiting); waiting = null; }
    }, 0);
  });
})();
