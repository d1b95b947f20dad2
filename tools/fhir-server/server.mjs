/**
 * A local FHIR R4 server for development and tests: Medplum's FhirRouter over an in-memory repository, behind
 * node:http, with optional bearer-token checking and a test control interface.
 *
 *   node --experimental-websocket tools/fhir-server/server.mjs --port 8090 [--host 127.0.0.1] [--base /fhir/R4]
 *        [--jwks-url URL --audience AUD [--issuer ISS]]
 *
 * Routes: {base}/... FHIR REST (create, read, vread, update, patch, delete, search, history, batch/transaction);
 * GET {base}/metadata and GET /healthz (no token needed); and, for tests, with no token:
 *   POST /_control/reset              empty the repository, clear faults and counters
 *   POST /_control/faults             {"status"?, "count"=1, "retryAfter"?, "delayMs"?, "after"=false, "methods"?}:
 *                                     the next `count` matching FHIR requests wait `delayMs`, then answer `status`
 *                                     (with Retry-After) or, with no status, are served normally. With "after": true
 *                                     the request is carried out first, so the client sees a slow or failed answer
 *                                     to a write that happened.
 *   GET|DELETE /_control/faults       list / clear pending faults
 *   GET /_control/stats               {"requests", "byMethod", "byStatus", "faultsServed", "pendingFaults",
 *                                      "arrivals" (ms since the epoch of each FHIR request, the first 10,000)}
 *   POST /_control/stats/reset
 * Faults apply before the token check, as in a gateway in front of the server. Every request under {base} counts.
 */
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { badRequest, getStatus, isOk, normalizeOperationOutcome, notFound, serverError } from '@medplum/core';
import { FhirRouter } from '@medplum/fhir-router';
import { JwksVerifier, TokenError } from './auth.mjs';
import { ControlError, Controls, faultOutcome } from './control.mjs';
import { LocalRepository, loadDefinitions } from './repository.mjs';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const MAX_BODY_BYTES = 32 * 1024 * 1024;
const JSON_TYPES = new Set(['application/fhir+json', 'application/json', 'application/json-patch+json']);

class HttpError extends Error {
  constructor(status, outcome) {
    super(outcome.issue?.[0]?.details?.text ?? `HTTP ${status}`);
    this.status = status;
    this.outcome = outcome;
  }
}

/** Runs async callbacks one at a time, so a transaction's undo log never holds another request's writes. */
class Mutex {
  tail = Promise.resolve();

  run(fn) {
    const result = this.tail.then(fn);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

function parseCli() {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      host: { type: 'string', default: '127.0.0.1' },
      base: { type: 'string', default: '/fhir/R4' },
      'jwks-url': { type: 'string' },
      audience: { type: 'string' },
      issuer: { type: 'string' },
    },
    strict: true,
  });
  const port = Number.parseInt(values.port, 10);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`Invalid --port ${values.port}`);
  }
  if (Boolean(values['jwks-url']) !== Boolean(values.audience)) {
    throw new Error('--jwks-url and --audience go together');
  }
  const base = `/${values.base.replace(/^\/+|\/+$/g, '')}`;
  const { host, audience, issuer } = values;
  return { port, host, base, jwksUrl: values['jwks-url'], audience, issuer };
}

function createFhirServer({ base, jwksUrl, audience, issuer }) {
  loadDefinitions();
  const repo = new LocalRepository();
  const router = new FhirRouter();
  const controls = new Controls();
  const mutex = new Mutex();
  const verifier = jwksUrl ? new JwksVerifier({ jwksUrl, audience, issuer }) : undefined;

  async function handle(req, res) {
    const url = new URL(req.url, 'http://localhost');
    const path = url.pathname;
    if (path === '/healthz') {
      return sendJson(res, 200, { status: 'ok' });
    }
    if (path === '/_control' || path.startsWith('/_control/')) {
      return handleControl(req, res, path.slice('/_control'.length));
    }
    if (path === base || path.startsWith(`${base}/`)) {
      return handleFhir(req, res, url);
    }
    return sendFhir(res, 404, notFound);
  }

  async function handleControl(req, res, path) {
    const route = `${req.method} ${path}`;
    if (route === 'POST /reset') {
      await mutex.run(() => {
        repo.clear();
        controls.reset();
      });
      return sendJson(res, 200, { status: 'reset' });
    }
    if (route === 'POST /faults') {
      const body = await readBody(req);
      try {
        return sendJson(res, 201, controls.addFault(JSON.parse(body.toString('utf8') || 'null')));
      } catch (err) {
        if (err instanceof ControlError || err instanceof SyntaxError) {
          return sendJson(res, 400, { error: err.message });
        }
        throw err;
      }
    }
    if (route === 'DELETE /faults') {
      controls.clearFaults();
      return sendJson(res, 200, { status: 'cleared' });
    }
    if (route === 'GET /faults') {
      return sendJson(res, 200, controls.snapshotStats().pendingFaults);
    }
    if (route === 'GET /stats') {
      return sendJson(res, 200, controls.snapshotStats());
    }
    if (route === 'POST /stats/reset') {
      controls.resetStats();
      return sendJson(res, 200, { status: 'reset' });
    }
    return sendJson(res, 404, { error: `No control route ${route}` });
  }

  async function handleFhir(req, res, url) {
    const method = req.method;
    controls.countRequest(method);
    // Counted when the answer is written (not on 'finish'), so a client that reads stats next always sees it.
    res.onStatus = (status) => controls.countStatus(status);
    const body = await readBody(req);

    const fault = controls.takeFault(method);
    if (fault && !fault.after) {
      await sleep(fault.delayMs);
      if (fault.status) {
        return sendFault(res, fault);
      }
    }

    const relPath = url.pathname.slice(base.length).replace(/^\/+|\/+$/g, '');
    const publicBase = `http://${req.headers.host ?? 'localhost'}${base}`;
    let response;
    if (method === 'GET' && relPath === 'metadata') {
      response = { status: 200, resource: capabilityStatement(publicBase, verifier) };
    } else if (verifier) {
      try {
        await verifier.verifyAuthorization(req.headers.authorization);
      } catch (err) {
        if (!(err instanceof TokenError)) {
          throw err;
        }
        return sendUnauthorized(res, err.message);
      }
    }
    response ??= await runFhirRequest(req, relPath, url.search, body);

    if (fault?.after) {
      await sleep(fault.delayMs);
      if (fault.status) {
        return sendFault(res, fault);
      }
    }
    const prefer = parsePrefer(req.headers.prefer);
    if (response.resource?.resourceType === 'Bundle') {
      decorateBundle(response.resource, publicBase);
    }
    return sendFhir(res, response.status, response.resource, { publicBase, prefer, outcome: response.outcome });
  }

  async function runFhirRequest(req, relPath, search, rawBody) {
    const method = req.method;
    const headers = { ...req.headers };
    if (headers['if-match']) {
      headers['if-match'] = normalizeEtag(headers['if-match']);
    }
    const body = parseRequestBody(req, rawBody);
    if (method === 'POST' && relPath === '' && body?.resourceType === 'Bundle') {
      for (const entry of body.entry ?? []) {
        if (entry?.request?.ifMatch) {
          entry.request.ifMatch = normalizeEtag(entry.request.ifMatch);
        }
      }
    }
    const fhirRequest = {
      method,
      url: relPath + search,
      body,
      params: {},
      query: {},
      headers,
      config: { transactions: true },
    };
    const instance = /^([A-Z][A-Za-z]+)\/([^/]+)$/.exec(relPath);
    return mutex.run(async () => {
      const existedBefore = method === 'PUT' && instance ? repo.exists(instance[1], instance[2]) : undefined;
      let outcome;
      let resource;
      try {
        [outcome, resource] = await router.handleRequest(fhirRequest, repo);
      } catch (err) {
        outcome = normalizeOperationOutcome(err);
      }
      let status = getStatus(outcome);
      if (existedBefore === false && status === 200) {
        status = 201; // update as create
      }
      return { status, outcome, resource: isOk(outcome) ? (resource ?? outcome) : outcome };
    });
  }

  const server = http.createServer((req, res) => {
    const started = performance.now();
    res.on('finish', () => {
      const ms = (performance.now() - started).toFixed(1);
      console.log(`${req.method} ${req.url} ${res.statusCode} ${ms}ms`);
    });
    handle(req, res).catch((err) => {
      if (err instanceof HttpError) {
        return sendFhir(res, err.status, err.outcome);
      }
      console.error(err);
      return sendFhir(res, 500, serverError(err));
    });
  });
  return { server, repo, controls };
}

function parseRequestBody(req, rawBody) {
  if (rawBody.length === 0) {
    return undefined;
  }
  const contentType = (req.headers['content-type'] ?? 'application/json').split(';')[0].trim().toLowerCase();
  if (contentType === 'application/x-www-form-urlencoded') {
    const query = {};
    for (const [name, value] of new URLSearchParams(rawBody.toString('utf8'))) {
      query[name] = name in query ? [query[name], value].flat() : value;
    }
    return query;
  }
  if (!JSON_TYPES.has(contentType)) {
    throw new HttpError(415, badRequest(`Unsupported Content-Type ${contentType}; send application/fhir+json`));
  }
  try {
    return JSON.parse(rawBody.toString('utf8'));
  } catch (err) {
    throw new HttpError(400, badRequest(`Invalid JSON body: ${err.message}`));
  }
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      throw new HttpError(413, badRequest(`Request body over ${MAX_BODY_BYTES} bytes`));
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** Medplum reads only a quoted version id from If-Match; accept a bare one too, as HAPI and Azure do. */
function normalizeEtag(value) {
  const text = String(value).trim();
  return text.includes('"') || text === '*' ? text : `W/"${text}"`;
}

function parsePrefer(header) {
  const match = /return\s*=\s*"?(minimal|representation|OperationOutcome)"?/i.exec(header ?? '');
  return match ? match[1].toLowerCase() : 'representation';
}

/** Add what clients expect and the memory repository leaves out: fullUrl, and ETag/Location in batch responses. */
function decorateBundle(bundle, publicBase) {
  const isResponse = bundle.type === 'transaction-response' || bundle.type === 'batch-response';
  for (const entry of bundle.entry ?? []) {
    const resource = entry?.resource;
    if (resource?.id && !entry.fullUrl) {
      entry.fullUrl = `${publicBase}/${resource.resourceType}/${resource.id}`;
    }
    const versionId = resource?.meta?.versionId;
    if (isResponse && entry.response && versionId && entry.response.status?.startsWith('2')) {
      entry.response.etag = `W/"${versionId}"`;
      entry.response.lastModified = resource.meta.lastUpdated;
      entry.response.location = `${resource.resourceType}/${resource.id}/_history/${versionId}`;
    }
  }
}

function sendFhir(res, status, resource, { publicBase, prefer = 'representation', outcome } = {}) {
  const headers = { 'Content-Type': FHIR_JSON };
  const versionId = resource?.meta?.versionId;
  if (versionId && resource.resourceType !== 'OperationOutcome') {
    headers.ETag = `W/"${versionId}"`;
    if (resource.meta.lastUpdated) {
      headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    }
    if (status === 201 && publicBase) {
      headers.Location = `${publicBase}/${resource.resourceType}/${resource.id}/_history/${versionId}`;
    }
  }
  let body = resource;
  if (status < 300 && prefer === 'minimal') {
    body = undefined;
  } else if (status < 300 && prefer === 'operationoutcome' && outcome) {
    body = outcome;
  }
  return send(res, status, headers, body);
}

function sendFault(res, fault) {
  const headers = { 'Content-Type': FHIR_JSON };
  if (fault.retryAfter !== undefined) {
    headers['Retry-After'] = String(fault.retryAfter);
  }
  return send(res, fault.status, headers, faultOutcome(fault.status));
}

function sendUnauthorized(res, description) {
  const quoteSafe = description.replaceAll('"', "'");
  const headers = {
    'Content-Type': FHIR_JSON,
    'WWW-Authenticate': `Bearer realm="local-fhir", error="invalid_token", error_description="${quoteSafe}"`,
  };
  const outcome = {
    resourceType: 'OperationOutcome',
    issue: [{ severity: 'error', code: 'login', details: { text: description } }],
  };
  return send(res, 401, headers, outcome);
}

function sendJson(res, status, value) {
  return send(res, status, { 'Content-Type': 'application/json' }, value);
}

function send(res, status, headers, body) {
  if (res.headersSent || res.destroyed) {
    return;
  }
  res.onStatus?.(status);
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { ...headers, 'Content-Length': Buffer.byteLength(payload) });
  res.end(payload);
}

function capabilityStatement(publicBase, verifier) {
  const interaction = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'local FHIR server (Medplum FhirRouter + MemoryRepository)' },
    implementation: { description: 'Local test server', url: publicBase },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json'],
    patchFormat: ['application/json-patch+json'],
    rest: [
      {
        mode: 'server',
        ...(verifier ? { security: { description: 'OAuth2 bearer token (RS256 JWT)' } } : undefined),
        resource: [{ type: 'Resource', interaction: interaction.map((code) => ({ code })) }],
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
      },
    ],
  };
}

async function main() {
  const options = parseCli();
  const started = performance.now();
  const { server } = createFhirServer(options);
  console.log(`fhir-server: FHIR definitions loaded in ${(performance.now() - started).toFixed(0)} ms`);
  server.listen(options.port, options.host, () => {
    const { address, port } = server.address();
    console.log(`fhir-server listening on http://${address}:${port}${options.base}`);
  });
  const shutdown = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    // Requests sleeping on an injected delay hold timers; do not wait for them.
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

main().catch((err) => {
  console.error(`fhir-server: ${err.message}`);
  process.exit(2);
});
