// jobreactor dashboard: live refresh of #live (one request at a time, paused while hidden)
// and actions posted with fetch. No dependencies; the server escapes every value it renders.
(function () {
  "use strict";
  var body = document.body;
  var every = parseInt(body.getAttribute("data-refresh-ms") || "2000", 10);
  var live = document.getElementById("live");
  var state = document.getElementById("live-state");
  var busy = false;

  function partialUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    return url.toString();
  }

  function refresh() {
    if (busy || document.hidden || !live) { return schedule(); }
    busy = true;
    fetch(partialUrl(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (!r.ok) { throw new Error(String(r.status)); }
        return r.text();
      })
      .then(function (html) {
        live.innerHTML = html;  // server-rendered, autoescaped
        state.textContent = "live";
        state.className = "live";
      })
      .catch(function () {
        state.textContent = "offline";
        state.className = "live off";
      })
      .finally(function () { busy = false; schedule(); });
  }

  var timer = null;
  function schedule() {
    if (timer) { clearTimeout(timer); }
    timer = setTimeout(refresh, every);
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.id === "jump") {
      event.preventDefault();
      var id = form.elements.id.value.trim();
      if (id) { window.location.href = form.getAttribute("action") + encodeURIComponent(id); }
      return;
    }
    var verb = form.getAttribute("data-action");
    if (!verb) { return; }
    event.preventDefault();
    if (verb === "delete" && !window.confirm("Delete this job?")) { return; }
    fetch(form.action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Accept": "application/json" }
    }).then(function (r) { return r.json(); })
      .then(function (answer) {
        var row = form.closest("tr");
        if (row) { row.classList.add(answer.ok ? "done" : "refused"); }
        refresh();
      });
  });

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) { refresh(); }
  });
  schedule();
})();
