// Run one job through the official Prodia client (prodia/v2) and print what the caller sees.
//
// Usage: node run-job.js '<request JSON>'
//   {"baseUrl": "http://127.0.0.1:PORT/v2", "token": "...", "job": {...},
//    "inputs": ["/path/to/image", ...], "inputKind": "arraybuffer" | "uint8array" | "blob" | "file",
//    "accept": "multipart/form-data" | undefined, "maxErrors": 1}
//
// Prints one JSON line: {"ok": true, "job": {...}, "outputs": [{name, type, size, base64}]}
// for a job that completed, or {"ok": false, "error": "<class name>", "message": "..."} when the
// client threw. Exits 0 either way; the Python test decides what is right.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { createProdia } = require("prodia/v2");

function asInput(file, kind) {
  const bytes = fs.readFileSync(file);
  switch (kind) {
    case "uint8array":
      return new Uint8Array(bytes);
    case "blob":
      return new Blob([bytes], { type: "image/png" });
    case "file":
      return new File([bytes], path.basename(file), { type: "image/png" });
    default:
      return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  }
}

async function main() {
  const request = JSON.parse(process.argv[2]);
  const prodia = createProdia({
    token: request.token,
    baseUrl: request.baseUrl,
    maxErrors: request.maxErrors ?? 1,
  });
  const options = {
    inputs: (request.inputs ?? []).map((file) => asInput(file, request.inputKind)),
  };
  if (request.accept) {
    options.accept = request.accept;
  }
  let result;
  try {
    result = await prodia.job(request.job, options);
  } catch (error) {
    console.log(JSON.stringify({ ok: false, error: error.constructor.name, message: error.message }));
    return;
  }
  const form = await result.formData();
  const outputs = [];
  for (const output of form.getAll("output")) {
    const buffer = Buffer.from(await output.arrayBuffer());
    outputs.push({
      name: output.name,
      type: output.type,
      size: buffer.length,
      base64: buffer.toString("base64"),
    });
  }
  console.log(JSON.stringify({ ok: true, job: result.job, outputs }));
}

main().catch((error) => {
  console.error(error);
  process.exit(2);
});
