// vigil console: re-fetches the page every few seconds and swaps in its <main>, keeping
// which <details> are open and the scroll position. The page works without this script.
(function () {
  "use strict";
  var EVERY_MS = 5000;
  var status = document.getElementById("refresh");
  var refreshes = 0;

  function openDetails() {
    var ids = [];
    document.querySelectorAll("main details[open]").forEach(function (d) {
      if (d.id) { ids.push(d.id); }
    });
    return ids;
  }

  function refresh() {
    fetch(window.location.pathname, { cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (text) {
        var next = new DOMParser().parseFromString(text, "text/html").querySelector("main");
        var current = document.querySelector("main");
        if (!next || !current) { throw new Error("the answer has no <main>"); }
        var open = openDetails();
        var y = window.scrollY;
        current.replaceWith(document.importNode(next, true));
        open.forEach(function (id) {
          var d = document.getElementById(id);
          if (d) { d.open = true; }
        });
        window.scrollTo(0, y);
        refreshes += 1;
        document.body.setAttribute("data-refreshes", String(refreshes));
        status.textContent = "live, refreshed " + new Date().toLocaleTimeString();
        status.className = "";
      })
      .catch(function (e) {
        status.textContent = "refresh failed (" + e.message + "), retrying";
        status.className = "bad";
      })
      .finally(function () { window.setTimeout(refresh, EVERY_MS); });
  }

  window.setTimeout(refresh, EVERY_MS);
})();
