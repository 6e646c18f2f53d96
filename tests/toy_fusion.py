"""A toy fusion, the whole of it in one file: the reward is the verifier's score (0 or 1, null when unverified).

It proves the Fusion contract: registered with one line (`register_fusion("verifier_score",
"toy_fusion:VerifierScoreFusion")`), chosen with `--fusion verifier_score`, it needs no change anywhere
else; the output schema, status checks, pairs, report and dataset card follow its declarations.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from schemas.rollouts import ORDER, PROMPT_ID
from transforms.fuse import Fusion


class VerifierScoreFusion(Fusion):
    name = "verifier_score"
    reward_column = "toy_reward"
    fields = (pa.field("toy_reward", pa.float64()), pa.field("toy_status", pa.string()))
    statuses = {"toy_status": ("verified", "unverified")}
    column_notes = {"toy_reward": "the verifier's score", "toy_status": "verified or unverified"}

    def fuse(self, table: pa.Table, statistic) -> pa.Table:
        table = table.sort_by([(PROMPT_ID, "ascending"), (ORDER, "ascending")])
        reward = table.column("verifier_score").cast(pa.float64())
        status = pc.if_else(pc.is_null(reward), "unverified", "verified")
        return table.append_column(self.fields[0], reward).append_column(self.fields[1], status)
