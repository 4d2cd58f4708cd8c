// Live runs list: while the page shows the newest runs or runs in flight, ask the
// server for the same page's rows every two seconds and swap them in (the server
// renders and escapes them; nothing here builds HTML from data).
(function () {
  "use strict";
  var table = document.getElementById("runs");
  if (!table) return;
  var body = document.getElementById("runs-body");
  function url() {
    var u = new URL(window.location.href);
    u.searchParams.set("fragment", "1");
    return u.toString();
  }
  function tick() {
    if (!table.dataset.live) return;
    fetch(url(), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var tpl = document.createElement("template");
        tpl.innerHTML = "<table><tbody>" + html + "</tbody></table>";
        var fresh = tpl.content.querySelector("tbody");
        body.replaceChildren.apply(body, Array.prototype.slice.call(fresh.children));
        var inFlight = body.querySelector("tr[data-state=Running], tr[data-state=Pending], tr[data-state=Retrying]");
        var first = !new URL(window.location.href).searchParams.get("offset");
        if (!inFlight && !first) delete table.dataset.live;
      })
      .catch(function () {})
      .then(function () { window.setTimeout(tick, 2000); });
  }
  window.setTimeout(tick, 2000);
})();
