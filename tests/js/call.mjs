// Calls the gateway with the Connect project's own clients, as a typed
// client generated from the .proto files would, and prints what came back
// as one JSON array. Driven by tests/tests/rpc_clients.rs:
//
//   node call.mjs spec.json
//
// spec: {"baseUrl", "descriptors": path of a FileDescriptorSet,
//        "calls": [{"transport", "service", "method", "request",
//                   "timeoutMs"?, "headers"?}]}
//
// Transports: "connect" and "connect-binary" (connect-node, Connect
// protocol, JSON or protobuf), "grpc-web" and "grpc-web-json"
// (connect-node's gRPC-Web, protobuf or JSON messages), "web-connect-get" and "web-grpc-web"
// (connect-web, over fetch, as in a browser).
import { readFileSync } from "node:fs";
import { createFileRegistry, fromBinary, fromJson, toJson } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { ConnectError, createClient } from "@connectrpc/connect";
import * as node from "@connectrpc/connect-node";
import * as web from "@connectrpc/connect-web";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const set = fromBinary(FileDescriptorSetSchema, readFileSync(spec.descriptors));
// The registry takes a file after the files it imports.
const ordered = [];
const placed = new Set();
while (ordered.length < set.file.length) {
  const before = ordered.length;
  for (const f of set.file) {
    if (!placed.has(f.name) && f.dependency.every((d) => placed.has(d))) {
      ordered.push(f);
      placed.add(f.name);
    }
  }
  if (ordered.length === before) throw new Error("descriptor files import files not in the set");
}
set.file = ordered;
const registry = createFileRegistry(set);
const baseUrl = spec.baseUrl;
const transports = {
  connect: node.createConnectTransport({ baseUrl, httpVersion: "1.1" }),
  "connect-binary": node.createConnectTransport({
    baseUrl,
    httpVersion: "1.1",
    useBinaryFormat: true,
  }),
  "grpc-web": node.createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }),
  "grpc-web-json": node.createGrpcWebTransport({
    baseUrl,
    httpVersion: "1.1",
    useBinaryFormat: false,
  }),
  "web-connect-get": web.createConnectTransport({ baseUrl, useHttpGet: true }),
  "web-grpc-web": web.createGrpcWebTransport({ baseUrl }),
};

const results = [];
for (const call of spec.calls) {
  const service = registry.getService(call.service);
  const method = service.methods.find((m) => m.name === call.method);
  const client = createClient(service, transports[call.transport]);
  const input = fromJson(method.input, call.request, { registry });
  let header = {};
  let trailer = {};
  const options = {
    timeoutMs: call.timeoutMs,
    headers: call.headers,
    onHeader: (h) => (header = Object.fromEntries(h)),
    onTrailer: (t) => (trailer = Object.fromEntries(t)),
  };
  const json = (m) => toJson(method.output, m, { registry });
  try {
    let ok;
    if (method.methodKind === "server_streaming") {
      ok = [];
      for await (const m of client[method.localName](input, options)) {
        ok.push(json(m));
      }
    } else {
      ok = json(await client[method.localName](input, options));
    }
    results.push({ ok, header, trailer });
  } catch (e) {
    const err = ConnectError.from(e);
    results.push({
      error: {
        code: err.code,
        message: err.rawMessage,
        details: err.details.map((d) => ("desc" in d ? d.desc.typeName : d.type)),
      },
      header,
      trailer,
    });
  }
}
console.log(JSON.stringify(results));
