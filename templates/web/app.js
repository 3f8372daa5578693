// cas-vpn admin UI: the only script. Pages work without it; with it, the dashboard's counters follow the server
// (server-sent events from /events) and the pairing window counts down. No eval, no inline handlers (the CSP
// forbids both): it only finds elements by their data-live attribute and sets their text.
(function () {
  "use strict";
  function set(name, text) {
    document.querySelectorAll('[data-live="' + name + '"]').forEach(function (el) { el.textContent = text; });
  }
  var left = null;
  function showWindow() {
    if (left === null) { return; }
    if (left <= 0) { set("window-left", "closed"); return; }
    var m = Math.floor(left / 60), s = left % 60;
    set("window-left", m + ":" + (s < 10 ? "0" : "") + s);
  }
  var clock = document.querySelector('[data-live="window-left"]');
  if (clock && clock.dataset.seconds) { left = parseInt(clock.dataset.seconds, 10); showWindow(); }
  setInterval(function () { if (left !== null && left > 0) { left -= 1; showWindow(); } }, 1000);
  if (!document.querySelector("[data-live]") || !window.EventSource) { return; }
  var events = new EventSource("/events");
  events.addEventListener("live", function (e) {
    var d = JSON.parse(e.data);
    set("terminals", d.terminals);
    set("admins", d.admins);
    set("sessions", d.sessions);
    set("pending", d.pending);
    if (d.window_left === null) {
      if (left !== null && left > 0) { left = 0; showWindow(); }
    } else {
      left = d.window_left;
      showWindow();
    }
  });
})();
