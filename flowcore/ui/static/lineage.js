// An asset's lineage: fetch the server's graph (assets, or past a few hundred of them
// groups of assets per level with counts by status), lay it out with dagre, draw it as
// SVG: upstream on the left, downstream on the right, each node coloured by its status,
// why on hover, a click opens the asset. Text is set with textContent only; the SVG is
// built off the document and attached once. When drawn, the box gets data-ready and
// data-rendered-ms (milliseconds since the page started loading: fetch, layout and
// drawing included) and data-layout-ms (dagre alone), which benchmarks/ui.py reads.
(function () {
  "use strict";
  var box = document.getElementById("lineage");
  if (!box || typeof dagre === "undefined") return;
  var NS = "http://www.w3.org/2000/svg";
  function el(name, attrs) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function titled(parent, text) {
    var t = document.createElementNS(NS, "title");
    t.textContent = text;
    parent.appendChild(t);
  }
  // dagre's ranker for levels given on the nodes (its own nodes, such as the root of
  // its nesting graph, go before the first level).
  function byLevel(graph) {
    var first = Infinity;
    graph.nodes().forEach(function (id) {
      var rank = graph.node(id).rank;
      if (typeof rank === "number" && rank < first) first = rank;
    });
    graph.nodes().forEach(function (id) {
      if (typeof graph.node(id).rank !== "number") graph.node(id).rank = first - 1;
    });
  }
  fetch(box.dataset.src, { credentials: "same-origin" })
    .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
    .then(function (data) {
      var big = data.nodes.length > 120;
      var g = new dagre.graphlib.Graph({ multigraph: true });
      // Past a hundred nodes: longest-path ranks and no crossing-reduction sweeps (the
      // costly parts of dagre; a lineage is a DAG whose levels read well as they are).
      // An aggregated graph comes with each node's level (edges from the asset, upstream
      // negative): those are its columns.
      var ranked = data.nodes.every(function (n) { return typeof n.level === "number"; });
      var ranker = ranked ? byLevel : big ? "longest-path" : "network-simplex";
      g.setGraph({ rankdir: "LR", nodesep: 10, ranksep: 48, marginx: 8, marginy: 8, ranker: ranker });
      g.setDefaultEdgeLabel(function () { return {}; });
      data.nodes.forEach(function (n) {
        var shown = n.label.length > 48 ? n.label.slice(0, 47) + "\u2026" : n.label;
        var node = { n: n, shown: shown, width: 18 + shown.length * 6.6, height: 24 };
        if (ranked) node.rank = 2 * n.level;  // dagre doubles every edge's length (label room)
        g.setNode(n.id, node);
      });
      data.edges.forEach(function (e, i) {
        if (g.hasNode(e.source) && g.hasNode(e.target)) g.setEdge(e.source, e.target, { e: e }, "e" + i);
      });
      var started = performance.now();
      dagre.layout(g, { disableOptimalOrderHeuristic: big });
      var layoutMs = performance.now() - started;
      var size = g.graph();
      var svg = el("svg", { width: size.width, height: size.height, "class": "lineage-graph", "data-mode": data.mode });
      var paths = el("g", { "class": "edges" });
      g.edges().forEach(function (ref) {
        var edge = g.edge(ref);
        var d = "M" + edge.points.map(function (p) { return p.x + "," + p.y; }).join("L");
        var path = el("path", { d: d, "data-source": ref.v, "data-target": ref.w });
        var e = edge.e;
        titled(path, ref.v + " \u2192 " + ref.w + (e.mapping ? " (" + e.mapping + ")" : "") + (e.count ? " \u00d7" + e.count : ""));
        paths.appendChild(path);
      });
      svg.appendChild(paths);
      g.nodes().forEach(function (id) {
        var v = g.node(id), n = v.n;
        var grp = el("g", { "class": "node as-" + n.status + (n.root ? " root" : "") + (n.count ? " aggregate" : ""),
                            "data-id": id, "data-status": n.status });
        var target = grp;
        if (n.href && !n.root) {
          target = el("a", { href: n.href });
          grp.appendChild(target);
        }
        titled(target, n.label + ": " + n.status + (n.reason ? " (" + n.reason + ")" : ""));
        target.appendChild(el("rect", { x: v.x - v.width / 2, y: v.y - v.height / 2, width: v.width, height: v.height, rx: 4 }));
        var text = el("text", { x: v.x - v.width / 2 + 7, y: v.y + 4 });
        text.textContent = v.shown;
        target.appendChild(text);
        svg.appendChild(grp);
      });
      var note = document.createElement("p");
      note.className = "note";
      note.textContent = data.upstream + " upstream, " + data.downstream + " downstream" +
        (data.mode === "aggregated" ? "; " + data.total + " assets, grouped by " + data.grouped : "");
      box.replaceChildren(svg, note);
      box.dataset.layoutMs = Math.round(layoutMs);
      box.dataset.renderedMs = Math.round(performance.now());
      box.dataset.ready = "1";
    })
    .catch(function (err) { box.textContent = "The lineage could not be loaded (" + err + ")."; });
})();
