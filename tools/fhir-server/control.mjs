/**
 * Test controls for the local FHIR server: injected faults (status, Retry-After, delay) and request counters.
 *
 * Two kinds of fault rule, both posted to `POST /_control/faults`:
 * - counted: `{status?, count=1, retryAfter?, delayMs?, after=false, methods?}` — the next `count` matching requests;
 *   counted rules are used in the order they were added, and before any probabilistic rule.
 * - probabilistic: the same fields with `probability` (0 < p <= 1); `count`, when given, caps how many times the rule
 *   fires. The rule stays until the faults are cleared. Several at once: `{"rules": [rule, ...], "seed": 42}`. Each
 *   request that no counted rule took draws one number in [0, 1) and takes the first probabilistic rule (among those
 *   matching its method) whose cumulative probability covers it: 0.3, 0.1 and 0.05 mean 30 %, 10 % and 5 % of the
 *   requests, 55 % untouched. The probabilities of all probabilistic rules may add up to 1 at most. `seed` (an
 *   integer, with `rules` or on a single rule) restarts the sequence of draws (mulberry32), so a run is repeatable
 *   as far as the order of its requests is.
 * Stats count every fault served (`faultsServed`) and per kind (`faultsByKind`: "429", "503", "delay+after", ...).
 */

const FAULT_ISSUE_CODES = { 429: 'throttled', 503: 'transient', 504: 'timeout' };

const MAX_ARRIVALS = 10_000;

export class Controls {
  constructor() {
    this.reset();
  }

  reset() {
    this.faults = [];
    this.randomFaults = [];
    this.seed(Math.floor(Math.random() * 2 ** 32));
    this.resetStats();
  }

  resetStats() {
    this.stats = { requests: 0, byMethod: {}, byStatus: {}, faultsServed: 0, faultsByKind: {}, arrivals: [] };
  }

  /** Restart the draws of the probabilistic rules from `seed`. */
  seed(seed) {
    this.currentSeed = seed >>> 0;
    this.random = mulberry32(this.currentSeed);
  }

  /**
   * Parse and store one rule, or several (`{rules: [...], seed?}`).
   * @param {object} spec - `{status?, count?, probability?, retryAfter?, delayMs?, after?, methods?, seed?}`.
   * @returns {object} the stored rule (or `{rules, seed}` for several).
   */
  addFault(spec) {
    if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) {
      throw new ControlError('Fault must be a JSON object');
    }
    const { seed } = spec;
    if (seed !== undefined && seed !== null && !(Number.isInteger(seed) && seed >= 0)) {
      throw new ControlError('seed must be a non-negative integer');
    }
    if ('rules' in spec) {
      if (!Array.isArray(spec.rules) || spec.rules.length === 0) {
        throw new ControlError('rules must be a non-empty list of fault rules');
      }
      const extra = Object.keys(spec).filter((k) => k !== 'rules' && k !== 'seed');
      if (extra.length > 0) {
        throw new ControlError(`Unexpected ${extra.join(', ')} next to rules`);
      }
      const rules = spec.rules.map((r, i) => parseRule(r, `rules[${i}]`));
      this.checkProbabilities(rules);
      this.store(rules, seed);
      return { rules: rules.map(publicRule), seed: this.currentSeed };
    }
    const rule = parseRule(spec, 'fault');
    this.checkProbabilities([rule]);
    this.store([rule], seed);
    return rule.probability === undefined ? rule : { ...publicRule(rule), seed: this.currentSeed };
  }

  checkProbabilities(rules) {
    const total = [...this.randomFaults, ...rules].reduce((sum, r) => sum + (r.probability ?? 0), 0);
    if (total > 1 + 1e-9) {
      throw new ControlError(`The probabilities of the probabilistic rules add up to ${total}, more than 1`);
    }
  }

  store(rules, seed) {
    if (seed !== undefined && seed !== null) {
      this.seed(seed);
    }
    for (const rule of rules) {
      (rule.probability === undefined ? this.faults : this.randomFaults).push(rule);
    }
  }

  clearFaults() {
    this.faults = [];
    this.randomFaults = [];
  }

  /** Take one use of the first counted rule matching `method`, else draw among the probabilistic ones; or undefined. */
  takeFault(method) {
    let rule = this.faults.find((r) => r.remaining > 0 && matches(r, method));
    if (rule) {
      rule.remaining--;
      this.faults = this.faults.filter((r) => r.remaining > 0);
    } else {
      rule = this.draw(method);
      if (!rule) {
        return undefined;
      }
      rule.served++;
      if (rule.remaining !== undefined) {
        rule.remaining--;
        this.randomFaults = this.randomFaults.filter((r) => r.remaining === undefined || r.remaining > 0);
      }
    }
    this.stats.faultsServed++;
    const kind = faultKind(rule);
    this.stats.faultsByKind[kind] = (this.stats.faultsByKind[kind] ?? 0) + 1;
    return rule;
  }

  draw(method) {
    if (this.randomFaults.length === 0) {
      return undefined;
    }
    const u = this.random();
    let cumulative = 0;
    for (const rule of this.randomFaults) {
      if (!matches(rule, method)) {
        continue;
      }
      cumulative += rule.probability;
      if (u < cumulative) {
        return rule;
      }
    }
    return undefined;
  }

  countRequest(method) {
    this.stats.requests++;
    this.stats.byMethod[method] = (this.stats.byMethod[method] ?? 0) + 1;
    // When each FHIR request arrived (ms since the epoch, sub-millisecond), the first 10,000 since a reset: rate tests
    // measure where the requests arrive.
    if (this.stats.arrivals.length < MAX_ARRIVALS) {
      this.stats.arrivals.push(performance.timeOrigin + performance.now());
    }
  }

  countStatus(status) {
    this.stats.byStatus[status] = (this.stats.byStatus[status] ?? 0) + 1;
  }

  snapshotStats() {
    return {
      ...structuredClone(this.stats),
      seed: this.currentSeed,
      pendingFaults: [
        ...this.faults.map(({ remaining, ...rule }) => ({ ...rule, count: remaining })),
        ...this.randomFaults.map(publicRule),
      ],
    };
  }
}

export class ControlError extends Error {}

/** The OperationOutcome an injected fault answers with. */
export function faultOutcome(status) {
  return {
    resourceType: 'OperationOutcome',
    issue: [
      {
        severity: 'error',
        code: FAULT_ISSUE_CODES[status] ?? (status >= 500 ? 'exception' : 'processing'),
        details: { text: `Injected fault: HTTP ${status}` },
      },
    ],
  };
}

function parseRule(spec, where) {
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) {
    throw new ControlError(`${where} must be a JSON object`);
  }
  const { status, count, probability, retryAfter, delayMs, after = false, methods } = spec;
  if (status !== undefined && status !== null && !(Number.isInteger(status) && status >= 100 && status <= 599)) {
    throw new ControlError(`${where}: status must be an HTTP status code`);
  }
  if (count !== undefined && count !== null && !(Number.isInteger(count) && count >= 1)) {
    throw new ControlError(`${where}: count must be a positive integer`);
  }
  const random = probability !== undefined && probability !== null;
  if (random && !(typeof probability === 'number' && probability > 0 && probability <= 1)) {
    throw new ControlError(`${where}: probability must be a number in (0, 1]`);
  }
  if (retryAfter !== undefined && retryAfter !== null && !(typeof retryAfter === 'number' && retryAfter >= 0)) {
    throw new ControlError(`${where}: retryAfter must be a non-negative number of seconds`);
  }
  if (delayMs !== undefined && delayMs !== null && !(Number.isInteger(delayMs) && delayMs >= 0)) {
    throw new ControlError(`${where}: delayMs must be a non-negative integer`);
  }
  if (typeof after !== 'boolean') {
    throw new ControlError(`${where}: after must be a boolean`);
  }
  if (methods !== undefined && methods !== null && !(Array.isArray(methods) && methods.every(isString))) {
    throw new ControlError(`${where}: methods must be a list of HTTP methods`);
  }
  if ((status === undefined || status === null) && !delayMs) {
    throw new ControlError(`${where}: a fault needs a status, a delayMs, or both`);
  }
  const rule = {
    status: status ?? undefined,
    remaining: random ? (count ?? undefined) : (count ?? 1),
    retryAfter: retryAfter ?? undefined,
    delayMs: delayMs ?? 0,
    after,
    methods: methods ? methods.map((m) => m.toUpperCase()) : undefined,
  };
  if (random) {
    rule.probability = probability;
    rule.served = 0;
  }
  return rule;
}

function publicRule({ remaining, ...rule }) {
  return remaining === undefined ? rule : { ...rule, count: remaining };
}

function matches(rule, method) {
  return !rule.methods || rule.methods.includes(method);
}

function faultKind(rule) {
  const parts = [rule.status, rule.delayMs ? 'delay' : undefined, rule.after ? 'after' : undefined];
  return parts.filter((p) => p !== undefined).join('+');
}

/** A small seeded PRNG (mulberry32): uniform numbers in [0, 1). */
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function isString(value) {
  return typeof value === 'string';
}
