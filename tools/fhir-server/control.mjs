/**
 * Test controls for the local FHIR server: injected faults (status, Retry-After, delay) for the next N matching
 * requests, and request counters.
 */

const FAULT_ISSUE_CODES = { 429: 'throttled', 503: 'transient', 504: 'timeout' };

export class Controls {
  constructor() {
    this.reset();
  }

  reset() {
    this.faults = [];
    this.resetStats();
  }

  resetStats() {
    this.stats = { requests: 0, byMethod: {}, byStatus: {}, faultsServed: 0 };
  }

  /**
   * Parse and queue a fault rule. Rules are used in the order they were added.
   * @param {object} spec - `{status?, count?, retryAfter?, delayMs?, after?, methods?}`.
   * @returns {object} the stored rule.
   */
  addFault(spec) {
    if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) {
      throw new ControlError('Fault must be a JSON object');
    }
    const { status, count = 1, retryAfter, delayMs, after = false, methods } = spec;
    if (status !== undefined && status !== null && !(Number.isInteger(status) && status >= 100 && status <= 599)) {
      throw new ControlError('status must be an HTTP status code');
    }
    if (!Number.isInteger(count) || count < 1) {
      throw new ControlError('count must be a positive integer');
    }
    if (retryAfter !== undefined && retryAfter !== null && !(typeof retryAfter === 'number' && retryAfter >= 0)) {
      throw new ControlError('retryAfter must be a non-negative number of seconds');
    }
    if (delayMs !== undefined && delayMs !== null && !(Number.isInteger(delayMs) && delayMs >= 0)) {
      throw new ControlError('delayMs must be a non-negative integer');
    }
    if (typeof after !== 'boolean') {
      throw new ControlError('after must be a boolean');
    }
    if (methods !== undefined && methods !== null && !(Array.isArray(methods) && methods.every(isString))) {
      throw new ControlError('methods must be a list of HTTP methods');
    }
    if ((status === undefined || status === null) && !delayMs) {
      throw new ControlError('A fault needs a status, a delayMs, or both');
    }
    const rule = {
      status: status ?? undefined,
      remaining: count,
      retryAfter: retryAfter ?? undefined,
      delayMs: delayMs ?? 0,
      after,
      methods: methods ? methods.map((m) => m.toUpperCase()) : undefined,
    };
    this.faults.push(rule);
    return rule;
  }

  clearFaults() {
    this.faults = [];
  }

  /** Take one use of the first rule matching `method`, or undefined. */
  takeFault(method) {
    const rule = this.faults.find((r) => r.remaining > 0 && (!r.methods || r.methods.includes(method)));
    if (!rule) {
      return undefined;
    }
    rule.remaining--;
    this.faults = this.faults.filter((r) => r.remaining > 0);
    this.stats.faultsServed++;
    return rule;
  }

  countRequest(method) {
    this.stats.requests++;
    this.stats.byMethod[method] = (this.stats.byMethod[method] ?? 0) + 1;
  }

  countStatus(status) {
    this.stats.byStatus[status] = (this.stats.byStatus[status] ?? 0) + 1;
  }

  snapshotStats() {
    return {
      ...structuredClone(this.stats),
      pendingFaults: this.faults.map(({ remaining, ...rule }) => ({ ...rule, count: remaining })),
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

function isString(value) {
  return typeof value === 'string';
}
