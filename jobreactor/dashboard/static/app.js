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
    // Paused while rows are selected for a bulk action (a refresh would clear the boxes).
    if (busy || document.hidden || !live || document.querySelector("input[name=id]:checked")) {
      return schedule();
    }
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
      if (id) {  // ids a path segment can't carry as is go in the query (views.path_safe)
        var safe = /^[A-Za-z0-9_.:@~-]{1,200}$/.test(id) && id !== "." && id !== "..";
        window.location.href = form.getAttribute("action") +
          (safe ? id : "?id=" + encodeURIComponent(id));
      }
      return;
    }
    if (form.getAttribute("data-bulk")) { return bulk(event, form); }
    var verb = form.getAttribute("data-action");
    if (!verb) { return; }
    event.preventDefault();
    if ((verb === "delete" || verb === "drain") && !window.confirm(verb + "?")) { return; }
    post(form.action, null).then(function (answer) {
      var row = form.closest("tr");
      if (row) { row.classList.add(answer.ok ? "done" : "refused"); }
      say(answer);
      refresh();
    });
  });

  function post(url, body) {
    var headers = { "Accept": "application/json" };
    if (body) { headers["Content-Type"] = "application/x-www-form-urlencoded"; }
    return fetch(url, { method: "POST", credentials: "same-origin", headers: headers, body: body })
      .then(function (r) { return r.json(); });
  }

  function say(answer) {  // a refusal is shown, never silent
    var box = document.getElementById("notice");
    if (!box) {
      box = document.createElement("p");
      box.id = "notice";
      document.querySelector("main").insertBefore(box, live);
    }
    box.className = answer.ok ? "notice ok" : "notice bad";
    box.textContent = answer.ok ? (answer.action + ": done" +
      (answer.done !== undefined ? " (" + answer.done + " of " + answer.asked + ")" : "") +
      (answer.state ? " · now " + answer.state : "")) : ("refused: " + (answer.error || "?"));
  }

  function bulk(event, form) {
    event.preventDefault();
    var button = event.submitter || form.querySelector("button");
    var verb = button.getAttribute("data-verb");
    var ids = Array.prototype.map.call(
      document.querySelectorAll("input[name=id]:checked"), function (box) { return box.value; });
    if (!ids.length) { return say({ ok: false, error: "select jobs first" }); }
    if (!window.confirm(verb + " " + ids.length + " job(s)?")) { return; }
    var body = new URLSearchParams();
    ids.forEach(function (id) { body.append("id", id); });
    body.append("confirm", "yes");
    post(button.getAttribute("formaction"), body.toString()).then(function (answer) {
      say(answer);
      document.querySelectorAll("input[name=id]:checked").forEach(function (b) { b.checked = false; });
      refresh();
    });
  }

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box.classList && box.classList.contains("all")) {
      box.closest("table").querySelectorAll("input[name=id]").forEach(function (b) {
        b.checked = box.checked;
      });
    }
  });

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) { refresh(); }
  });
  schedule();
})();
