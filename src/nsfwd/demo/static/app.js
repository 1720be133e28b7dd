// The demo page: a client of this server's public API, as any other would be.
//
// On load: /demo/config.json (policies, threshold, default model), then GET /v1/models for the
// model list (a server without that route gets its default model alone). A chosen or dropped
// image goes to POST /v2/job as a Prodia img2label job; its labels become bars, and each policy's
// score is judged against the threshold slider here, with no further request. A video goes the
// same way (or, over the image size limit, to POST /v2/job/async, polled until it is done); its
// answer also draws a timeline of its flagged segments, and clicking one seeks the player there.
// A detector (its kind from /v1/models) gets, for an image, a v2 job that asks for a redacted
// copy (config.redact): its config.regions are drawn as boxes over the image, and a toggle shows
// the copy the answer carries as its output image. A 401 anywhere asks for a token, kept in
// localStorage and sent as "Authorization: Bearer".

import { formatPercent, isFlagged, scorePolicy } from "./policies.js";

const TOKEN_KEY = "nsfwd.token";
const JOB_TYPE = "inference.vit.img2label.v1";
const VIDEO_NAME = /\.(mp4|m4v|mov|webm|mkv)$/i;
const POLL_MS = 500;
const DETECTOR_JOB_TYPE = "inference.vit.img2label.v2"; // its answer carries the redacted copy

const $ = (id) => document.getElementById(id);
const ui = {
  tokenForm: $("token-form"),
  token: $("token"),
  tokenError: $("token-error"),
  forgetToken: $("forget-token"),
  model: $("model"),
  drop: $("drop"),
  file: $("file"),
  preview: $("preview"),
  player: $("player"),
  boxes: $("boxes"),
  redactedToggle: $("redacted-toggle"),
  showRedacted: $("show-redacted"),
  status: $("status"),
  error: $("error"),
  result: $("result"),
  labels: $("labels"),
  threshold: $("threshold"),
  thresholdValue: $("threshold-value"),
  verdicts: document.querySelector("#verdicts tbody"),
  timing: $("timing"),
  videoResult: $("video-result"),
  timeline: $("timeline"),
  timelineCaption: $("timeline-caption"),
  segments: $("segments"),
};

const state = {
  config: null,
  file: null,
  previewUrl: null,
  redactedUrl: null,
  kinds: {}, // model name -> "classifier" | "detector", from GET /v1/models
  result: null,
  sequence: 0, // of classify calls: only the latest one's answer is shown
  retry: null, // what to run again once a token is given
};

/** The server answered 401: a token is missing, or the one sent was refused. */
class TokenNeeded extends Error {
  constructor(message, sent) {
    super(message);
    this.sent = sent;
  }
}

function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return ""; // storage disabled: the user is asked again after each reload
  }
}

function storeToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: nothing to keep
  }
  ui.forgetToken.hidden = !token;
}

/** fetch() on this server with the stored token; a 401 throws TokenNeeded. */
async function call(path, init = {}) {
  const headers = new Headers(init.headers);
  const token = storedToken();
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const response = await fetch(path, { ...init, headers, cache: "no-store" });
  if (response.status === 401) throw new TokenNeeded((await response.text()).trim(), !!token);
  return response;
}

/** What went wrong, from a refusal in any of the server's formats (job JSON, JSON, text). */
async function refusal(response) {
  const text = (await response.text()).trim();
  try {
    const doc = JSON.parse(text);
    const message = doc.error ?? doc.message ?? doc.detail;
    if (typeof message === "string") return `${response.status}: ${message}`;
    if (typeof message?.message === "string") return `${response.status}: ${message.message}`;
  } catch {
    // not JSON: the text itself
  }
  return `${response.status}: ${text || response.statusText}`;
}

function showStatus(text) {
  ui.status.textContent = text;
}

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = !text;
}

/** Run `action`; a 401 asks for a token and runs it again once one is given. */
async function attempt(action) {
  try {
    await action();
  } catch (error) {
    showStatus("");
    if (error instanceof TokenNeeded) {
      state.retry = action;
      askForToken(error);
    } else {
      showError(error instanceof Error ? error.message : String(error));
    }
  }
}

function askForToken(error) {
  ui.tokenError.textContent = error.sent
    ? `The server refused this token: ${error.message}`
    : "";
  ui.tokenError.hidden = !error.sent;
  ui.tokenForm.hidden = false;
  ui.token.value = "";
  ui.token.focus();
}

async function loadConfig() {
  showStatus("Loading…");
  const response = await call("/demo/config.json");
  if (!response.ok) throw new Error(await refusal(response));
  state.config = await response.json();
  ui.threshold.value = String(state.config.threshold);
  showThreshold();
  await loadModels();
  ui.file.disabled = false;
  showStatus("");
}

async function loadModels() {
  const response = await call("/v1/models");
  let names = [];
  if (response.ok) {
    const doc = await response.json();
    if (Array.isArray(doc?.data)) {
      names = doc.data.map((model) => model.id).filter(Boolean);
      state.kinds = Object.fromEntries(doc.data.map((model) => [model.id, model.kind]));
    }
  } else if (response.status !== 404) {
    throw new Error(await refusal(response));
  }
  if (names.length === 0) names = [state.config.model]; // no model list here: the default
  const current = ui.model.value;
  ui.model.replaceChildren(
    ...names.map((name) => new Option(name, name, false, false)),
  );
  const wanted = [current, state.config.model].find((name) => names.includes(name));
  ui.model.value = wanted ?? names[0];
  ui.model.disabled = names.length < 2;
}

function isVideo(file) {
  return file.type.startsWith("video/") || VIDEO_NAME.test(file.name || "");
}

function choose(file) {
  if (!file) return;
  state.file = file;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  const video = isVideo(file);
  ui.player.hidden = !video;
  ui.preview.hidden = video;
  if (video) {
    ui.preview.removeAttribute("src");
    ui.player.src = state.previewUrl;
  } else {
    ui.player.removeAttribute("src");
    ui.preview.src = state.previewUrl;
  }
  ui.showRedacted.checked = false;
  ui.boxes.replaceChildren();
  attempt(classify);
}

/** A video over the sync route's upload limit goes to the async route, polled until done. */
function route(file) {
  const big = isVideo(file) && file.size > state.config.max_image_bytes;
  return big ? "/v2/job/async" : "/v2/job";
}

async function finished(doc, sequence) {
  let job = doc;
  while (job.state?.current === "processing") {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    if (sequence !== state.sequence) return job; // a newer file was chosen meanwhile
    const response = await call(`/v2/job/async/${encodeURIComponent(doc.id)}/job.json`);
    if (!response.ok) throw new Error(await refusal(response));
    job = await response.json();
  }
  if (job.state?.current === "failed") throw new Error(job.error ?? "the job failed");
  return job;
}

async function classify() {
  const file = state.file;
  if (!file || !state.config) return;
  const sequence = ++state.sequence;
  const model = ui.model.value;
  const redacting = state.kinds[model] === "detector" && !isVideo(file); // images only
  const job = redacting
    ? { type: DETECTOR_JOB_TYPE, config: { model, redact: { style: "blur", labels: "all" } } }
    : { type: JOB_TYPE, config: { model } };
  const form = new FormData();
  form.append("job", new Blob([JSON.stringify(job)], { type: "application/json" }), "job.json");
  form.append("input", file, file.name || "image");
  showError("");
  showStatus(`Classifying ${file.name || "the image"}…`);
  const started = performance.now();
  const response = await call(route(file), {
    method: "POST",
    body: form,
    headers: { Accept: redacting ? "multipart/form-data" : "application/json" },
  });
  if (!response.ok) {
    const message = await refusal(response);
    if (sequence === state.sequence) throw new Error(message);
    return;
  }
  const answer = await readAnswer(response, redacting);
  const doc = await finished(answer.doc, sequence);
  const redacted = answer.redacted;
  const roundTrip = performance.now() - started;
  if (sequence !== state.sequence) return; // a newer image was chosen meanwhile
  if (state.redactedUrl) URL.revokeObjectURL(state.redactedUrl);
  state.redactedUrl = redacted ? URL.createObjectURL(redacted) : null;
  state.result = {
    model: doc.config.model ?? model, // as the server ran it
    name: file.name,
    labels: doc.config.labels,
    judged: doc.config.judged ?? null,
    segments: doc.config.segments ?? null,
    regions: doc.config.regions ?? null,
    elapsed: doc.metrics.elapsed,
    roundTrip,
  };
  showStatus("");
  showResult();
}

/** Seconds as the timeline shows them. */
function seconds(value) {
  return `${Number(value).toFixed(1)} s`;
}

function seek(time) {
  ui.player.currentTime = time;
  ui.player.dataset.sought = String(time);
}

/** A video's timeline: its length as a bar, each flagged segment on it (click: seek there),
 * the worst moment marked, and the segments listed. */
function showTimeline() {
  const { judged, segments } = state.result;
  ui.videoResult.hidden = segments === null;
  if (segments === null) return;
  const duration = Math.max(judged.duration, 1e-3);
  const place = (time) => `${Math.min(Math.max(time / duration, 0), 1) * 100}%`;
  const bars = segments.map((segment) => {
    const bar = document.createElement("button");
    bar.type = "button";
    bar.className = "segment";
    bar.dataset.start = String(segment.start);
    bar.style.left = place(segment.start);
    bar.style.width = `calc(${place(segment.end - segment.start)} + 4px)`;
    bar.title = `${seconds(segment.start)} to ${seconds(segment.end)}, score ${formatPercent(segment.score)}`;
    bar.addEventListener("click", () => seek(segment.start));
    return bar;
  });
  const worst = document.createElement("div");
  worst.className = "worst";
  worst.style.left = place(judged.time);
  worst.title = `the worst moment, ${seconds(judged.time)}`;
  ui.timeline.replaceChildren(...bars, worst);
  const { policy, threshold } = state.config;
  ui.timelineCaption.textContent =
    `${judged.frames_judged} frames judged over ${seconds(judged.duration)}; ` +
    `${segments.length} flagged segment${segments.length === 1 ? "" : "s"} ` +
    `(${policy} above ${threshold}); the labels below are the worst moment's, at ` +
    `${seconds(judged.time)}.` + (judged.incomplete ? ` Not judged to its end: ${judged.incomplete}.` : "");
  ui.segments.replaceChildren(
    ...segments.map((segment) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `${seconds(segment.start)} to ${seconds(segment.end)}`;
      button.addEventListener("click", () => seek(segment.start));
      item.append(button, ` (score ${formatPercent(segment.score)})`);
      return item;
    }),
  );
}

/** The job document, and for a detector's v2 job the redacted copy (its second output). */
async function readAnswer(response, multipart) {
  if (!multipart) return { doc: await response.json(), redacted: null };
  const form = await response.formData();
  const doc = JSON.parse(await form.get("job").text());
  const outputs = form.getAll("output");
  return { doc, redacted: outputs.length > 1 ? outputs[1] : null };
}

/** The regions of the first frame as boxes over the preview, in percent of the image's size. */
function showRegions() {
  const regions = state.result?.regions;
  ui.redactedToggle.hidden = !(regions && state.redactedUrl);
  ui.boxes.replaceChildren();
  ui.boxes.dataset.count = String(regions ? regions.length : 0);
  if (!regions) return;
  const show = () => {
    const width = ui.preview.naturalWidth;
    const height = ui.preview.naturalHeight;
    if (!width || !height) return;
    ui.boxes.replaceChildren(
      ...regions
        .filter((region) => (region.frame ?? 0) === 0)
        .map((region) => {
          const [x, y, w, h] = region.box;
          const box = document.createElement("div");
          box.className = "box";
          box.dataset.label = region.label;
          box.style.left = `${(100 * x) / width}%`;
          box.style.top = `${(100 * y) / height}%`;
          box.style.width = `${(100 * w) / width}%`;
          box.style.height = `${(100 * h) / height}%`;
          const name = document.createElement("span");
          name.textContent = `${region.label} ${formatPercent(region.score)}`;
          box.append(name);
          return box;
        }),
    );
  };
  if (ui.preview.complete) show();
  else ui.preview.addEventListener("load", show, { once: true });
}

function showRedacted() {
  if (!ui.player.hidden) return; // a video: the player shows it
  const redacted = ui.showRedacted.checked && state.redactedUrl;
  ui.preview.src = redacted ? state.redactedUrl : state.previewUrl;
  ui.boxes.hidden = Boolean(redacted);
}

function showResult() {
  const { labels, elapsed, roundTrip, model } = state.result;
  ui.labels.replaceChildren(
    ...Object.entries(labels).map(([label, probability]) => {
      const item = document.createElement("li");
      item.dataset.label = label;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = label;
      const track = document.createElement("div");
      track.className = "track";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.width = `${Math.min(Math.max(probability, 0), 1) * 100}%`;
      track.append(fill);
      const percent = document.createElement("span");
      percent.className = "pct";
      percent.textContent = formatPercent(probability);
      item.append(name, track, percent);
      return item;
    }),
  );
  ui.timing.textContent =
    `${model}: ${(elapsed * 1000).toFixed(1)} ms on the server, ` +
    `${roundTrip.toFixed(1)} ms with the upload`;
  ui.result.dataset.image = state.result.name;
  ui.result.dataset.model = model;
  ui.result.hidden = false;
  showTimeline();
  showVerdicts();
  showRedacted();
  showRegions();
}

function showThreshold() {
  ui.thresholdValue.textContent = Number(ui.threshold.value).toFixed(2);
}

function showVerdicts() {
  if (!state.result) return;
  const threshold = Number(ui.threshold.value);
  const { policies, safe_labels: safeLabels, policy: defaultPolicy } = state.config;
  ui.verdicts.replaceChildren(
    ...Object.entries(policies).map(([policy, buckets]) => {
      const row = document.createElement("tr");
      row.dataset.policy = policy;
      const scored = scorePolicy(buckets, safeLabels, state.result.labels);
      const name = document.createElement("td");
      name.textContent = policy;
      if (policy === defaultPolicy) {
        const tag = document.createElement("span");
        tag.className = "default";
        tag.textContent = "(this server's)";
        name.append(tag);
      }
      const counts = document.createElement("td");
      const score = document.createElement("td");
      score.className = "score";
      const verdict = document.createElement("td");
      verdict.className = "verdict";
      if (scored === null) {
        counts.textContent = "—";
        score.textContent = "—";
        verdict.textContent = "cannot score these labels";
      } else {
        const flagged = isFlagged(scored.score, threshold);
        row.dataset.score = String(scored.score);
        row.dataset.flagged = String(flagged);
        counts.textContent = scored.counts;
        score.textContent = formatPercent(scored.score);
        verdict.textContent = flagged ? "flagged" : "passes";
      }
      row.append(name, counts, score, verdict);
      return row;
    }),
  );
}

ui.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = ui.token.value.trim();
  if (!token) return;
  storeToken(token);
  ui.tokenForm.hidden = true;
  const retry = state.retry ?? loadConfig; // before the config, only loadConfig asks
  state.retry = null;
  attempt(retry);
});

ui.forgetToken.addEventListener("click", () => {
  storeToken("");
  attempt(loadConfig);
});

ui.model.addEventListener("change", () => attempt(classify));
ui.showRedacted.addEventListener("change", showRedacted);
ui.file.addEventListener("change", () => choose(ui.file.files[0]));
ui.threshold.addEventListener("input", () => {
  showThreshold();
  showVerdicts();
});

for (const type of ["dragenter", "dragover"]) {
  ui.drop.addEventListener(type, (event) => {
    event.preventDefault();
    ui.drop.classList.add("over");
  });
}
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
ui.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.drop.classList.remove("over");
  const files = event.dataTransfer?.files;
  if (ui.file.disabled || !files?.length) return;
  ui.file.files = files; // the picker then names the dropped file, not the last one picked
  choose(files[0]);
});
// A file dropped beside the zone must not make the browser leave the page to show it.
for (const type of ["dragover", "drop"]) {
  window.addEventListener(type, (event) => event.preventDefault());
}

storeToken(storedToken());
attempt(loadConfig);
