// The Cinfer console: live charts from the server-sent stream, the CSRF token on every
// htmx request. No inline script: the Content-Security-Policy allows only these files.
(function () {
  "use strict";

  document.addEventListener("htmx:configRequest", function (event) {
    const meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) event.detail.headers["X-CSRF-Token"] = meta.content;
  });

  function charts(root) {
    const made = [];
    root.querySelectorAll(".chart").forEach(function (el) {
      const keys = el.dataset.series.split(",");
      const labels = el.dataset.labels.split(",");
      // A series a GPU on the GPU charts: enough colours for an 8-GPU machine.
      const colours = ["#2457c5", "#b3261e", "#1f7a3a", "#8a5a00", "#6f42c1", "#0a7ea4",
        "#c2185b", "#5d6678"];
      const opts = {
        width: Math.max(240, el.clientWidth),
        height: 180,
        legend: { live: false },
        // Always the last 15 minutes, from 0 up: one sample is a point, not a year's axis.
        scales: {
          x: {
            time: true,
            range: function () { const now = Date.now() / 1000; return [now - 900, now + 5]; },
          },
          y: { range: function (u, min, max) { return [0, Math.max(1, (max || 0) * 1.15)]; } },
        },
        series: [{}].concat(labels.map(function (label, i) {
          return { label: label, stroke: colours[i % colours.length], width: 1.5, spanGaps: true };
        })),
        axes: [{}, { size: 50 }],
      };
      const data = [[]].concat(keys.map(function () { return []; }));
      const plot = new uPlot(opts, data, el);
      made.push({ el: el, keys: keys, plot: plot, data: data });
    });
    window.addEventListener("resize", function () {
      made.forEach(function (c) { c.plot.setSize({ width: Math.max(240, c.el.clientWidth), height: 180 }); });
    });
    return made;
  }

  function queues(sample) {
    const body = document.querySelector("#queues tbody");
    if (!body) return;
    body.replaceChildren();
    Object.entries(sample.queues).forEach(function (entry) {
      const row = document.createElement("tr");
      entry.forEach(function (value) {
        const cell = document.createElement("td");
        cell.textContent = String(value);
        row.appendChild(cell);
      });
      body.appendChild(row);
    });
  }

  function live() {
    const root = document.getElementById("charts");
    if (!root || typeof uPlot === "undefined") return;
    const made = charts(root);
    const state = document.getElementById("live-state");
    const limit = 450;

    function add(samples, replace) {
      made.forEach(function (c) {
        if (replace) c.data.forEach(function (column) { column.length = 0; });
        samples.forEach(function (s) {
          c.data[0].push(s.time);
          c.keys.forEach(function (key, i) { c.data[i + 1].push(s[key]); });
        });
        while (c.data[0].length > limit) c.data.forEach(function (column) { column.shift(); });
        c.plot.setData(c.data);
      });
      if (samples.length) queues(samples[samples.length - 1]);
    }

    // EventSource reconnects by itself when the server ends the stream or it drops.
    const source = new EventSource(root.dataset.stream);
    source.addEventListener("history", function (e) { add(JSON.parse(e.data), true); });
    source.addEventListener("sample", function (e) { add([JSON.parse(e.data)], false); });
    source.addEventListener("open", function () { state.textContent = "live"; state.classList.add("on"); });
    source.addEventListener("error", function () { state.textContent = "reconnecting…"; state.classList.remove("on"); });
  }

  // Copy buttons: data-copy names the element whose text is copied.
  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const text = document.getElementById(button.dataset.copy).textContent;
    function done() { button.textContent = "Copied"; }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done);
    } else {  // plain http beyond localhost: select it for Ctrl+C
      const range = document.createRange();
      range.selectNodeContents(document.getElementById(button.dataset.copy));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Selected: press Ctrl+C";
    }
  });

  document.addEventListener("DOMContentLoaded", live);
})();
