/* essaim dashboard: progressive enhancements. Every page works without this file.
 *
 * - <time data-relative datetime="..."> shows "3 min ago" (the exact time stays in its title)
 * - tables with <th data-sort="num|text"> sort on click
 * - forms with data-disable-on-submit disable their button while the request runs
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

  function makeSortable(table) {
    var heads = table.querySelectorAll("th[data-sort]");
    Array.prototype.forEach.call(heads, function (th) {
      th.setAttribute("tabindex", "0");
      var sort = function () {
        var index = Array.prototype.indexOf.call(th.parentNode.children, th);
        var kind = th.getAttribute("data-sort");
        var asc = th.getAttribute("aria-sort") !== "ascending";
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
    });
  }

  function init() {
    updateTimes();
    setInterval(updateTimes, 15000);
    Array.prototype.forEach.call(document.querySelectorAll("table"), function (t) {
      if (t.querySelector("th[data-sort]")) makeSortable(t);
    });
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
