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

  // Requests per UTC day (the tokens pages): the numbers come in a JSON block beside the
  // chart (console/daily.py), one series per token, or a token's requests and errors.
  function daily() {
    if (typeof uPlot === "undefined") return;
    const colours = ["#2457c5", "#b3261e", "#1f7a3a", "#8a5a00", "#6f42c1", "#00838f",
      "#c2185b", "#5d4037", "#5d6678"];
    const made = [];
    document.querySelectorAll(".daily-chart").forEach(function (el) {
      const chart = JSON.parse(document.getElementById(el.dataset.source).textContent);
      const opts = {
        width: Math.max(240, el.clientWidth),
        height: 220,
        legend: { live: false },
        // The days are UTC days: label them so, whatever the browser's time zone.
        tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
        scales: {
          x: { time: true },
          y: { range: function (u, min, max) { return [0, Math.max(1, (max || 0) * 1.15)]; } },
        },
        series: [{}].concat(chart.series.map(function (s, i) {
          return { label: s.label, stroke: colours[i % colours.length], width: 1.5,
            points: { show: true, size: 4 } };
        })),
        // Whole requests on the y axis: no 0.5 steps.
        axes: [{}, { size: 50, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3,
          1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 1e7, 1e8, 1e9] }],
      };
      const data = [chart.x].concat(chart.series.map(function (s) { return s.values; }));
      made.push({ el: el, plot: new uPlot(opts, data, el) });
    });
    window.addEventListener("resize", function () {
      made.forEach(function (c) { c.plot.setSize({ width: Math.max(240, c.el.clientWidth), height: 220 }); });
    });
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

  // The upload form: sent by XMLHttpRequest for its progress bar; the server answers JSON
  // ({"location"} to follow the new version, or {"error"}). Without script the form posts.
  function upload() {
    const form = document.getElementById("upload-form");
    if (!form) return;
    const bar = document.getElementById("upload-progress");
    const status = document.getElementById("upload-status");
    const error = document.getElementById("upload-error");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const button = form.querySelector("button[type=submit]");
      const request = new XMLHttpRequest();
      request.open("POST", form.action);
      request.setRequestHeader("X-Requested-With", "cinfer-console");
      request.upload.addEventListener("progress", function (e) {
        if (!e.lengthComputable) return;
        bar.value = Math.round((100 * e.loaded) / e.total);
        status.textContent = bar.value < 100
          ? "Uploading… " + bar.value + " %"
          : "Uploaded. Checking the archive, loading the model in staging, trying one inference…";
      });
      request.addEventListener("load", function () {
        let answer = {};
        try { answer = JSON.parse(request.responseText); } catch (e) { answer = {}; }
        if (answer.location) { window.location.assign(answer.location); return; }
        error.textContent = answer.error || ("The upload failed (HTTP " + request.status + ").");
        error.hidden = false;
        status.textContent = "Nothing was added to the repository.";
        button.disabled = false;
      });
      request.addEventListener("error", function () {
        error.textContent = "The connection failed during the upload: nothing was added.";
        error.hidden = false;
        button.disabled = false;
      });
      error.hidden = true;
      bar.hidden = false;
      bar.value = 0;
      button.disabled = true;
      request.send(new FormData(form));
    });
  }

  // "API docs": hand the token made for this visit to the docs page (the key it reads).
  function apiDocs() {
    const found = document.getElementById("docs-token");
    if (!found) return;
    sessionStorage.setItem("cinfer-token", found.dataset.token);
    window.location.replace(found.dataset.docs);
  }

  document.addEventListener("DOMContentLoaded", apiDocs);
  document.addEventListener("DOMContentLoaded", live);
  document.addEventListener("DOMContentLoaded", upload);
  document.addEventListener("DOMContentLoaded", daily);
})();
