// gosok console: live updates. The page's <main> names the page it shows (data-live) and a
// fingerprint of what it shows (data-hash); the server sends the page's new <main> over
// Server-Sent Events whenever it renders differently. While a field inside <main> has the
// focus or holds something typed but not sent, an update waits, so nothing typed is lost.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || !main.dataset.live || !window.EventSource) return;
  var url = "/console/live?path=" + encodeURIComponent(main.dataset.live) +
    "&since=" + encodeURIComponent(main.dataset.hash || "");
  var waiting = null;
  function editing() {
    var a = document.activeElement;
    if (a && main.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName)) return true;
    var fields = main.querySelectorAll("input, textarea, select");
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if (f.type === "hidden") continue;
      if (f.tagName === "SELECT") {
        for (var j = 0; j < f.options.length; j++) {
          if (f.options[j].selected !== f.options[j].defaultSelected) return true;
        }
      } else if (f.type === "checkbox" || f.type === "radio") {
        if (f.checked !== f.defaultChecked) return true;
      } else if (f.value !== f.defaultValue) {
        return true;
      }
    }
    return false;
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
