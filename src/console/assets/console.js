// leanmq console: refresh in place, live filter, select all, confirmations.
// Served from leanmqd itself (no CDN); the page's CSP allows no inline script.
(function () {
  "use strict";

  var status = function (text) {
    var el = document.getElementById("refresh-status");
    if (el) el.textContent = text;
  };

  // <div data-refresh="URL" data-every="5">: re-fetch URL (a fragment) every
  // N seconds while the tab is visible, and swap it in.
  function refresh(el) {
    var url = el.getAttribute("data-refresh");
    return fetch(url, { credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return; }
        if (!r.ok) {
          status("Refresh failed: " + (r.headers.get("x-console-error") || r.status));
          el.classList.add("stale");
          return;
        }
        return r.text().then(function (html) {
          el.innerHTML = html;
          el.classList.remove("stale");
          status("Updated " + new Date().toLocaleTimeString());
        });
      })
      .catch(function () {
        status("Refresh failed: leanmqd is unreachable");
        el.classList.add("stale");
      });
  }

  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    var every = Math.max(2, parseInt(el.getAttribute("data-every") || "5", 10)) * 1000;
    setInterval(function () { if (!document.hidden) refresh(el); }, every);
  });

  // <input data-filter-for="ID">: filter as you type (the server filters;
  // the URL keeps the filter so a reload or a link shows the same).
  document.querySelectorAll("input[data-filter-for]").forEach(function (input) {
    var target = document.getElementById(input.getAttribute("data-filter-for"));
    if (!target) return;
    var timer = null;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var page = new URL(window.location.href);
        if (input.value) page.searchParams.set("q", input.value);
        else page.searchParams.delete("q");
        window.history.replaceState(null, "", page);
        var frag = new URL(target.getAttribute("data-refresh"), window.location.href);
        if (input.value) frag.searchParams.set("q", input.value);
        else frag.searchParams.delete("q");
        target.setAttribute("data-refresh", frag.pathname + frag.search);
        refresh(target);
      }, 250);
    });
  });

  // <input type=checkbox data-select-all>: tick every name=id box of its form.
  document.querySelectorAll("input[data-select-all]").forEach(function (all) {
    all.addEventListener("change", function () {
      all.form.querySelectorAll("input[type=checkbox][name=id]").forEach(function (b) {
        b.checked = all.checked;
      });
    });
  });

  // <button data-confirm="text">: ask first.
  document.querySelectorAll("[data-confirm]").forEach(function (b) {
    b.addEventListener("click", function (e) {
      if (!window.confirm(b.getAttribute("data-confirm"))) e.preventDefault();
    });
  });
})();
