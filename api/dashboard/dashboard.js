// The dashboard: a mentor's totals, time series and the leaderboard, read from this API.
// The token the user pastes stays in sessionStorage (this tab only), never in a URL.
"use strict";

const TOKEN_KEY = "referral-api-token";
const API = "/api/v1/referral-attributions";
const $ = (id) => document.getElementById(id);
let chart = null;

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

async function read(path) {
  const response = await fetch(path, { headers: authHeaders() });
  const body = await response.json();
  if (!response.ok) {
    const error = body && body.error ? body.error : { code: response.status, message: "" };
    throw new Error(`${error.code}: ${error.message}`);
  }
  return body;
}

function show(id, value, text) {
  const element = $(id);
  element.dataset.value = String(value);
  element.textContent = text === undefined ? String(value) : text;
}

function status(state, text) {
  const element = $("status");
  element.dataset.state = state;
  element.textContent = text;
}

function drawChart(series) {
  const times = series.data.map((point) => Date.parse(point.start) / 1000);
  const clicks = series.data.map((point) => point.clicks);
  const conversions = series.data.map((point) => point.conversions);
  const filtered = series.data.map((point) => point.filtered_clicks.duplicate + point.filtered_clicks.bot);
  const element = $("chart");
  const options = {
    width: Math.max(element.clientWidth - 16, 320),
    height: 300,
    tzDate: (seconds) => uPlot.tzDate(new Date(seconds * 1000), series.tz),
    series: [
      {},
      { label: "Counted clicks", stroke: "#2f6fed", width: 2 },
      { label: "Conversions", stroke: "#12a150", width: 2 },
      { label: "Duplicates and bots", stroke: "#c2410c", width: 1, dash: [4, 4] },
    ],
  };
  if (chart) {
    chart.destroy();
  }
  chart = new uPlot(options, [times, clicks, conversions, filtered], element);
  element.dataset.points = String(times.length);
}

function drawLeaderboard(top) {
  const body = $("leaderboard").querySelector("tbody");
  body.replaceChildren();
  top.data.forEach((row, index) => {
    const tr = document.createElement("tr");
    tr.dataset.mentor = row.mentor_id;
    for (const cell of [index + 1, row.mentor_id, row.total_clicks, row.total_conversions, row.conversion_rate]) {
      const td = document.createElement("td");
      td.textContent = String(cell);
      tr.appendChild(td);
    }
    body.appendChild(tr);
  });
}

async function load() {
  const mentor = $("mentor").value.trim();
  if (!mentor) {
    status("idle", "Enter a mentor.");
    return;
  }
  const query = new URLSearchParams({ period: $("period").value, tz: $("tz").value || "UTC" });
  const seriesQuery = new URLSearchParams(query);
  seriesQuery.set("interval", $("interval").value);
  status("loading", "Loading...");
  const id = encodeURIComponent(mentor);
  // Each part stands on its own: a refused series (too many buckets) leaves the totals.
  const [totals, series, top] = await Promise.allSettled([
    read(`${API}/mentor/${id}/total?${query}`),
    read(`${API}/mentor/${id}/timeseries?${seriesQuery}`),
    read(`${API}/mentors/top?${query}&limit=10`),
  ]);
  const errors = [];
  if (totals.status === "fulfilled") {
    const t = totals.value;
    show("total-clicks", t.total_clicks);
    show("total-conversions", t.total_conversions);
    show("conversion-rate", t.conversion_rate, (t.conversion_rate * 100).toFixed(1) + " %");
    show("filtered-duplicate", t.filtered_clicks.duplicate);
    show("filtered-bot", t.filtered_clicks.bot);
  } else {
    errors.push("totals: " + totals.reason.message);
  }
  if (series.status === "fulfilled") {
    drawChart(series.value);
  } else {
    errors.push("series: " + series.reason.message);
  }
  if (top.status === "fulfilled") {
    drawLeaderboard(top.value);
  } else {
    errors.push("leaderboard: " + top.reason.message);
  }
  if (errors.length > 0) {
    status("error", errors.join("; "));
  } else {
    const s = series.value;
    status("ready", `${s.data.length} ${s.interval} buckets in ${s.tz}.`);
  }
}

function init() {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [zone];
  const list = $("zones");
  for (const name of zones) {
    const option = document.createElement("option");
    option.value = name;
    list.appendChild(option);
  }
  // Settings (never the token) may come from the page's query: a link to a view.
  const params = new URLSearchParams(window.location.search);
  $("mentor").value = params.get("mentor") || "";
  $("tz").value = params.get("tz") || zone;
  for (const id of ["period", "interval"]) {
    if (params.get(id)) {
      $(id).value = params.get(id);
    }
  }
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("token").addEventListener("change", () => {
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  });
  $("query").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    load();
  });
  load();
}

document.addEventListener("DOMContentLoaded", init);
