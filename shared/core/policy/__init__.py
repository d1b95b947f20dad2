"""Field-ownership policy: which calling app may change which elements of which resources at which target.

The policy is a YAML file (``config/policy.yaml``), validated once at start-up into a :class:`Policy`:

- ``schema``: the file's shape, as pydantic models, and the words it uses (the operations; allow, approve, deny);
- ``loader``: reading the file, every problem named by field and line, compiled into rules; ``check_known_targets``;
- ``elements``: the FHIR R4 elements of a resource type (fhirpathpy's R4 model), rule keys checked against them;
- ``conditions``: the ``when`` FHIRPath conditions, parsed strictly, compiled and evaluated;
- ``rules``: one source x target x resource type's rules: the rule a changed path falls under, and why;
- ``decision``: :class:`Policy` and :class:`PolicyDecision`: allow, approve or deny a change, and the reviewers'
  target scope.
"""

from shared.core.policy.decision import Policy, PolicyDecision
from shared.core.policy.rules import PolicyReason, ReasonCode
from shared.core.policy.schema import OPERATIONS, Decision

__all__ = ["OPERATIONS", "Decision", "Policy", "PolicyDecision", "PolicyReason", "ReasonCode"]
