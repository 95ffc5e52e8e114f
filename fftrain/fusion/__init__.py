"""FaceFusion: merge the classes whose proxies match across datasets (see `fftrain.fusion.run`).

`plan_fusion` decides (kNN, candidate pairs, components: changes nothing), `apply_fusion` reshards
the weight and optimizer state by the plan, `run_fusion` does both and writes the report. Every
setting comes in one `fftrain.config.FusionConfig`.
"""

from fftrain.config import FUSION_POLICIES as POLICIES
from fftrain.fusion.components import Component, FusionPlan, Rejected, build_plan
from fftrain.fusion.knn import distributed_knn
from fftrain.fusion.report import SourceInfo
from fftrain.fusion.reshard import reshard_merge
from fftrain.fusion.readiness import ReadinessCheck, ReadinessWatch
from fftrain.fusion.run import FusionResult, PlannedFusion, apply_fusion, plan_fusion, proxy_geometry, run_fusion
from fftrain.fusion.threshold import T1Decision, choose_t1

__all__ = ["run_fusion", "plan_fusion", "apply_fusion", "PlannedFusion", "FusionResult", "SourceInfo", "Component",
           "Rejected", "FusionPlan", "POLICIES", "distributed_knn", "build_plan", "reshard_merge", "proxy_geometry",
           "ReadinessWatch", "ReadinessCheck", "T1Decision", "choose_t1"]
