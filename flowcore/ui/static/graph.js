// The task graph: fetch the server's graph (task runs, or task names aggregated with
// counts by state for big runs), lay it out with dagre, draw it as SVG. Labels are set
// with textContent only.
(function () {
  "use strict";
  var box = document.getElementById("graph");
  if (!box || typeof dagre === "undefined") return;
  var NS = "http://www.w3.org/2000/svg";
  function el(name, attrs) {
    var e = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function label(n) {
    if (n.count === undefined) return n.label;
    var parts = Object.keys(n.states).map(function (s) { return s + " " + n.states[s]; });
    return n.label + " ×" + n.count + " (" + parts.join(", ") + ")";
  }
  fetch(box.dataset.src, { credentials: "same-origin" })
    .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
    .then(function (data) {
      var g = new dagre.graphlib.Graph({ multigraph: true });
      g.setGraph({ rankdir: "LR", nodesep: 12, ranksep: 40, marginx: 8, marginy: 8 });
      g.setDefaultEdgeLabel(function () { return {}; });
      data.nodes.forEach(function (n) {
        var text = label(n);
        var shown = text.length > 56 ? text.slice(0, 55) + "\u2026" : text;
        g.setNode(n.id, { text: text, shown: shown, state: n.state, width: 16 + shown.length * 6.6, height: 24 });
      });
      data.edges.forEach(function (e, i) {
        if (g.hasNode(e.source) && g.hasNode(e.target)) g.setEdge(e.source, e.target, { kind: e.kind }, "e" + i);
      });
      dagre.layout(g);
      var size = g.graph();
      var svg = el("svg", { width: size.width, height: size.height, "class": "task-graph", "data-mode": data.mode });
      g.edges().forEach(function (e) {
        var pts = g.edge(e).points;
        var d = "M" + pts.map(function (p) { return p.x + "," + p.y; }).join("L");
        svg.appendChild(el("path", { d: d, "class": g.edge(e).kind }));
      });
      g.nodes().forEach(function (id) {
        var n = g.node(id);
        var grp = el("g", { "class": "node st-" + n.state, "data-id": id });
        var rect = el("rect", { x: n.x - n.width / 2, y: n.y - n.height / 2, width: n.width, height: n.height, rx: 4, "class": "st-" + n.state });
        var text = el("text", { x: n.x - n.width / 2 + 6, y: n.y + 4 });
        text.textContent = n.shown;
        var title = el("title");
        title.textContent = n.text;  // the whole label, on hover
        grp.appendChild(title); grp.appendChild(rect); grp.appendChild(text); svg.appendChild(grp);
      });
      box.replaceChildren(svg);
      var note = document.createElement("p");
      note.className = "note";
      note.textContent = data.mode === "task_names"
        ? data.total + " task runs, aggregated by task name"
        : data.total + " task runs";
      box.appendChild(note);
      box.dataset.renderedMs = Math.round(performance.now());  // since navigation started
      box.dataset.ready = "1";
    })
    .catch(function (err) { box.textContent = "The graph could not be loaded (" + err + ")."; });
})();
