/* essaim dashboard charts: small dependency-free SVG line charts.
 *
 * Markup:  <div class="chart" data-chart="ID"></div>  with  <script type="application/json" id="ID">
 * holding {"x": "time"|"number", "y_label": "...", "series": [{"name": "...", "points": [[x, y], ...]}]}.
 * Optional data-src="/api/v1/..." and data-kind="online"|"progress:<field>" refetch the data every
 * data-refresh seconds (default 15). Each drawn chart sets data-points to the number of points it
 * shows; every point is an SVG <circle class="pt"> unless a series has more than MAX_DOTS points.
 */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var MAX_DOTS = 240;
  var M = { top: 12, right: 16, bottom: 28, left: 52 };

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) {
      if (Object.prototype.hasOwnProperty.call(attrs, key)) node.setAttribute(key, String(attrs[key]));
    }
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceStep(span, count) {
    var raw = span / Math.max(1, count);
    var mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var norm = raw / mag;
    var step = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10;
    return step * mag;
  }

  function ticks(min, max, count) {
    if (!(max > min)) return [min];
    var step = niceStep(max - min, count);
    var out = [];
    for (var v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(v);
    return out;
  }

  var TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

  function timeTicks(min, max, count) {
    var span = max - min;
    if (!(span > 0)) return [min];
    var step = TIME_STEPS[TIME_STEPS.length - 1];
    for (var i = 0; i < TIME_STEPS.length; i++) {
      if (span / TIME_STEPS[i] <= count) { step = TIME_STEPS[i]; break; }
    }
    var offset = step >= 86400 ? new Date(min * 1000).getTimezoneOffset() * -60 : 0;
    var out = [];
    for (var v = Math.ceil((min + offset) / step) * step - offset; v <= max; v += step) out.push(v);
    return out;
  }

  function pad(n) { return n < 10 ? "0" + n : String(n); }

  function fmtTime(t, span) {
    var d = new Date(t * 1000);
    if (span > 2 * 86400) return (d.getMonth() + 1) + "/" + d.getDate() + " " + pad(d.getHours()) + "h";
    if (span < 120) return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    return pad(d.getHours()) + ":" + pad(d.getMinutes());
  }

  function fmtNum(v) {
    var a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e9) return (v / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return String(Math.round(v * 100) / 100);
    return v.toPrecision(3).replace(/0+$/, "").replace(/\.$/, "");
  }

  function extent(series, idx) {
    var lo = Infinity, hi = -Infinity;
    series.forEach(function (s) {
      s.points.forEach(function (p) {
        if (p[idx] < lo) lo = p[idx];
        if (p[idx] > hi) hi = p[idx];
      });
    });
    return [lo, hi];
  }

  function nearest(points, x) {
    var lo = 0, hi = points.length - 1;
    while (hi - lo > 1) {
      var mid = (lo + hi) >> 1;
      if (points[mid][0] < x) lo = mid; else hi = mid;
    }
    return Math.abs(points[lo][0] - x) <= Math.abs(points[hi][0] - x) ? lo : hi;
  }

  function draw(box, spec) {
    var series = (spec.series || []).map(function (s) {
      var pts = (s.points || []).filter(function (p) { return isFinite(p[0]) && isFinite(p[1]); });
      pts.sort(function (a, b) { return a[0] - b[0]; });
      return { name: String(s.name || ""), points: pts };
    }).filter(function (s) { return s.points.length > 0; });
    var isTime = spec.x === "time";
    var width = Math.max(200, box.clientWidth), height = Math.max(120, box.clientHeight);
    while (box.firstChild) box.removeChild(box.firstChild);
    var svg = el("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": spec.y_label || "chart" }, box);
    var total = series.reduce(function (n, s) { return n + s.points.length; }, 0);
    box.setAttribute("data-points", String(total));
    if (total === 0) {
      var t = el("text", { x: width / 2, y: height / 2, "text-anchor": "middle", "class": "no-data" }, svg);
      t.textContent = spec.empty || "No data yet";
      return;
    }
    var xs = extent(series, 0), ys = extent(series, 1);
    if (xs[0] === xs[1]) { xs = isTime ? [xs[0] - 60, xs[1] + 60] : [xs[0] - 1, xs[1] + 1]; }
    if (spec.y_zero !== false && ys[0] > 0) ys[0] = 0;
    if (ys[0] === ys[1]) { ys = [ys[0] - 1, ys[1] + 1]; if (spec.y_zero !== false && ys[0] < 0 && ys[1] > 0) ys[0] = 0; }
    var yt = ticks(ys[0], ys[1], Math.max(2, Math.floor(height / 50)));
    ys = [Math.min(ys[0], yt[0]), Math.max(ys[1], yt[yt.length - 1])];
    var pw = width - M.left - M.right, ph = height - M.top - M.bottom;
    function sx(v) { return M.left + (v - xs[0]) / (xs[1] - xs[0]) * pw; }
    function sy(v) { return M.top + ph - (v - ys[0]) / (ys[1] - ys[0]) * ph; }

    var axis = el("g", { "class": "axis" }, svg);
    yt.forEach(function (v) {
      el("line", { "class": "grid-line", x1: M.left, x2: width - M.right, y1: sy(v), y2: sy(v) }, axis);
      var label = el("text", { x: M.left - 8, y: sy(v) + 4, "text-anchor": "end" }, axis);
      label.textContent = fmtNum(v);
    });
    var xt = isTime ? timeTicks(xs[0], xs[1], Math.max(2, Math.floor(pw / 90))) : ticks(xs[0], xs[1], Math.max(2, Math.floor(pw / 80)));
    xt.forEach(function (v) {
      var label = el("text", { x: sx(v), y: height - 8, "text-anchor": "middle" }, axis);
      label.textContent = isTime ? fmtTime(v, xs[1] - xs[0]) : fmtNum(v);
    });
    el("line", { x1: M.left, x2: width - M.right, y1: M.top + ph, y2: M.top + ph }, axis);

    series.forEach(function (s, i) {
      var cls = "s" + (i % 4);
      var d = s.points.map(function (p, j) { return (j ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join("");
      if (series.length === 1 && s.points.length > 1) {
        var base = sy(Math.max(ys[0], Math.min(0, ys[1])));
        el("path", { "class": "area " + cls, d: d + "L" + sx(s.points[s.points.length - 1][0]).toFixed(1) + "," + base + "L" + sx(s.points[0][0]).toFixed(1) + "," + base + "Z" }, svg);
      }
      el("path", { "class": "line " + cls, d: d }, svg);
      if (s.points.length <= MAX_DOTS) {
        var dots = el("g", { "class": "dots" }, svg);
        s.points.forEach(function (p) {
          el("circle", { "class": "pt " + cls, cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: s.points.length > 60 ? 2 : 3, "data-x": p[0], "data-y": p[1] }, dots);
        });
      }
    });

    var cursor = el("line", { "class": "cursor", y1: M.top, y2: M.top + ph, visibility: "hidden" }, svg);
    var focus = series.map(function (s, i) { return el("circle", { "class": "pt s" + (i % 4), r: 4.5, visibility: "hidden" }, svg); });
    var tip = document.createElement("div");
    tip.className = "chart-tip";
    tip.hidden = true;
    box.appendChild(tip);
    svg.addEventListener("mousemove", function (ev) {
      var rect = svg.getBoundingClientRect();
      var px = (ev.clientX - rect.left) * (width / rect.width);
      var x = xs[0] + (px - M.left) / pw * (xs[1] - xs[0]);
      var best = null;
      while (tip.firstChild) tip.removeChild(tip.firstChild);
      series.forEach(function (s, i) {
        var p = s.points[nearest(s.points, x)];
        if (best === null || Math.abs(p[0] - x) < Math.abs(best - x)) best = p[0];
        focus[i].setAttribute("cx", sx(p[0]));
        focus[i].setAttribute("cy", sy(p[1]));
        focus[i].setAttribute("visibility", "visible");
        var line = document.createElement("div");
        var key = document.createElement("span");
        key.className = "key s" + (i % 4);
        line.appendChild(key);
        line.appendChild(document.createTextNode((s.name ? s.name + ": " : "") + fmtNum(p[1])));
        tip.appendChild(line);
      });
      var head = document.createElement("div");
      head.className = "muted";
      head.textContent = isTime ? new Date(best * 1000).toLocaleString() : (spec.x_label || "x") + " " + fmtNum(best);
      tip.insertBefore(head, tip.firstChild);
      cursor.setAttribute("x1", sx(best));
      cursor.setAttribute("x2", sx(best));
      cursor.setAttribute("visibility", "visible");
      tip.hidden = false;
      var left = (sx(best) / width) * rect.width + 12;
      if (left + tip.offsetWidth > rect.width) left = left - tip.offsetWidth - 24;
      tip.style.left = Math.max(0, left) + "px";
      tip.style.top = "8px";
    });
    svg.addEventListener("mouseleave", function () {
      tip.hidden = true;
      cursor.setAttribute("visibility", "hidden");
      focus.forEach(function (f) { f.setAttribute("visibility", "hidden"); });
    });
  }

  /* Turn a JSON API answer into a chart spec, for charts that refresh themselves. */
  var KINDS = {
    online: function (data) {
      return { x: "time", series: [{ name: "online", points: data.points.map(function (p) { return [p.at, p.online]; }) }] };
    },
    throughput: function (data) {
      return { x: "time", series: [{ name: "samples/s", points: data.points.map(function (p) { return [p.at, p.samples_per_second]; }) }] };
    },
    progress: function (data, field) {
      var pts = data.points.filter(function (p) { return p[field] !== null && (field !== "loss" || p.loss > 0); });
      return { x: "time", series: [{ name: field === "eval_metric" ? data.eval_metric_name : field.replace(/_/g, " "), points: pts.map(function (p) { return [p.at, p[field]]; }) }] };
    }
  };

  function setup(box) {
    var source = document.getElementById(box.getAttribute("data-chart"));
    var spec = { series: [] };
    try { spec = JSON.parse(source ? source.textContent : "{}"); } catch (e) { spec = { series: [] }; }
    var render = function () { draw(box, spec); };
    render();
    if (typeof ResizeObserver !== "undefined") {
      var lastWidth = box.clientWidth;
      new ResizeObserver(function () {
        if (box.clientWidth !== lastWidth) { lastWidth = box.clientWidth; render(); }
      }).observe(box);
    }
    var src = box.getAttribute("data-src"), kind = (box.getAttribute("data-kind") || "").split(":");
    if (src && KINDS[kind[0]]) {
      var every = Math.max(5, Number(box.getAttribute("data-refresh") || 15)) * 1000;
      setInterval(function () {
        if (document.hidden) return;
        fetch(src, { credentials: "same-origin", headers: { Accept: "application/json" } })
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (data) {
            if (!data) return;
            var fresh = KINDS[kind[0]](data, kind[1]);
            fresh.y_label = spec.y_label;
            fresh.empty = spec.empty;
            fresh.y_zero = spec.y_zero;
            spec = fresh;
            render();
          })
          .catch(function () { /* keep the last drawing */ });
      }, every);
    }
  }

  function init() {
    var boxes = document.querySelectorAll("[data-chart]");
    for (var i = 0; i < boxes.length; i++) setup(boxes[i]);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
