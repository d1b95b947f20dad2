"""The policy file's shape, as pydantic models, and the words it uses (the operations; allow, approve, deny).

Shape::

    version: "2026-11-25"            # recorded (with a short hash of the file) in the lineage of every decision
    sources:                         # one entry per source system, i.e. per calling app
      crm:                           # source name: letters, digits, '_', '-', '.'
        app_ids: [crm]               # caller app ids (Entra appid / azp, Easy Auth appid) acting as this source;
                                     # matched case-insensitively, each id in at most one source; may be [] when
                                     # the setting WRITEBACK_SOURCE_<NAME>_APP_IDS gives them (it replaces the list)
        targets:
          local-ehr:                 # a target id from the targets file
            Patient:                 # a FHIR R4 resource type
              operations: [update, patch]     # any of create, update, patch; at least one
              require_base_version: false     # true: update/patch without baseVersion is denied
              when: "Patient.active = true"   # optional FHIRPath on the proposed resource; must be exactly true
              paths:                 # element -> allow | approve | deny; anything unlisted is denied
                Patient.telecom: allow
                Patient.name: approve
                Patient.meta.tag: allow          # an element of meta (tag, security, profile, source, id,
                Patient.meta: deny               # extension); Patient.meta: the other ones but security
                Patient.meta.security: deny      # security labels: only a rule of this name decides
                "*": deny            # the rule for every element not listed (but meta.security)

An optional ``reviewers`` list scopes the reading roles (Audit, Approve, Operate) to targets::

    reviewers:
      - principals: [u-900, review-portal]   # user object ids or app ids
        targets: [local-ehr]                 # or ["*"]
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

__all__ = ["OPERATIONS", "Decision", "PolicyFile", "PolicyOperation"]

Decision = Literal["allow", "approve", "deny"]
PolicyOperation = Literal["create", "update", "patch"]
OPERATIONS: Final[tuple[PolicyOperation, ...]] = ("create", "update", "patch")

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_TARGET_ID = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"  # as in shared.core.targets

_SourceName = Annotated[str, StringConstraints(pattern=_NAME)]
_TargetId = Annotated[str, StringConstraints(pattern=_TARGET_ID)]
_AppId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]


class _ResourceRulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    operations: list[PolicyOperation] = Field(min_length=1)
    require_base_version: bool = False
    when: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] | None = None
    paths: dict[str, Decision] = Field(default_factory=dict)


class _SourceFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    app_ids: list[_AppId]  # [] allowed: a deployment names its app ids in WRITEBACK_SOURCE_<NAME>_APP_IDS
    targets: dict[_TargetId, dict[str, _ResourceRulesFile]] = Field(default_factory=dict)


class _ReviewerFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    principals: list[_AppId] = Field(min_length=1)
    targets: list[Annotated[str, StringConstraints(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_\-]{0,63})$")]] = Field(
        min_length=1
    )


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    version: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$")]
    sources: dict[_SourceName, _SourceFile]
    reviewers: list[_ReviewerFile] | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _date_as_text(cls, v: object) -> object:
        # An unquoted 2026-11-25 is a YAML date; take it as the text it was written as.
        return v.isoformat() if isinstance(v, date) else v
