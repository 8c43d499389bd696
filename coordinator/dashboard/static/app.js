/* essaim dashboard: progressive enhancements. Every page works without this file.
 *
 * - <time data-relative datetime="..."> shows "3 min ago" (the exact time stays in its title)
 * - tables with <th data-sort="num|text"> sort on click
 * - forms with data-disable-on-submit disable their button while the request runs
 * - elements with data-live and an id (cards, tables) follow the swarm without a reload: every
 *   LIVE_EVERY_MS the page's own HTML is fetched again, parsed (DOMParser
 *   runs no script) and each live element's content swapped for its fresh copy, the table's sort
 *   kept; not while the tab is hidden
 */
(function () {
  "use strict";

  function relative(seconds) {
    var s = Math.round(seconds);
    if (s < 5) return "just now";
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function updateTimes() {
    var nodes = document.querySelectorAll("time[data-relative]");
    var now = Date.now();
    for (var i = 0; i < nodes.length; i++) {
      var t = Date.parse(nodes[i].getAttribute("datetime"));
      if (!isNaN(t)) {
        if (!nodes[i].title) nodes[i].title = new Date(t).toLocaleString();
        nodes[i].textContent = relative((now - t) / 1000);
      }
    }
  }

  function cellValue(row, index, kind) {
    var cell = row.children[index];
    if (!cell) return kind === "num" ? -Infinity : "";
    var raw = cell.getAttribute("data-value");
    if (raw === null) raw = cell.textContent.trim();
    if (kind === "num") {
      var v = parseFloat(raw);
      return isNaN(v) ? -Infinity : v;
    }
    return raw.toLowerCase();
  }

  var LIVE_EVERY_MS = 15000;
  var sorted = {};  // table id -> [column index, ascending]: kept when a live table is refreshed

  function makeSortable(table) {
    var heads = table.querySelectorAll("th[data-sort]");
    Array.prototype.forEach.call(heads, function (th) {
      th.setAttribute("tabindex", "0");
      var sort = function (ascending) {
        var index = Array.prototype.indexOf.call(th.parentNode.children, th);
        var kind = th.getAttribute("data-sort");
        var asc = typeof ascending === "boolean" ? ascending : th.getAttribute("aria-sort") !== "ascending";
        if (table.id) sorted[table.id] = [index, asc];
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, index, kind), y = cellValue(b, index, kind);
          var c = x < y ? -1 : x > y ? 1 : 0;
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (ev) { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sort(); } });
      th._sort = sort;
    });
    var was = table.id && sorted[table.id];
    if (was && heads.length) {
      var th = table.querySelector("thead tr").children[was[0]];
      if (th && th._sort) th._sort(was[1]);
    }
  }

  function enhance(root) {
    Array.prototype.forEach.call(root.querySelectorAll("table"), function (t) {
      if (t.querySelector("th[data-sort]")) makeSortable(t);
    });
  }

  function refreshLive(regions) {
    if (document.hidden) return;
    fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        Array.prototype.forEach.call(regions, function (el) {
          var copy = fresh.getElementById(el.id);
          if (!copy) return;
          el.innerHTML = copy.innerHTML;
          enhance(el);
        });
        updateTimes();
        document.body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* offline a moment: the next round tries again */ });
  }

  function init() {
    updateTimes();
    setInterval(updateTimes, 15000);
    enhance(document);
    var regions = document.querySelectorAll("[data-live][id]");
    if (regions.length) {
      setInterval(function () { refreshLive(regions); }, LIVE_EVERY_MS);
    }
    Array.prototype.forEach.call(document.querySelectorAll("form[data-disable-on-submit]"), function (f) {
      f.addEventListener("submit", function () {
        Array.prototype.forEach.call(f.querySelectorAll("button"), function (b) {
          setTimeout(function () { b.disabled = true; }, 0);
        });
      });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
