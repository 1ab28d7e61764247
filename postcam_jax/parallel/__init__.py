"""Parallelism: the mesh, the logical-to-mesh axis rules, multi-host start-up and chip facts.

Imports only JAX and Flax: every other part of the package may import it.
"""

from postcam_jax.parallel.mesh import MESH_AXES, make_mesh, mesh_spec_str, parse_mesh_spec
from postcam_jax.parallel.rules import (
                                        LOGICAL_RULES,
                                        constrain,
                                        fit_spec,
                                        logical_to_spec,
                                        param_shardings,
                                        put_global,
                                        rules_dict,
                                        shard_module,
)

__all__ = ["MESH_AXES", "make_mesh", "mesh_spec_str", "parse_mesh_spec", "LOGICAL_RULES",
           "constrain", "fit_spec", "logical_to_spec", "param_shardings", "put_global",
           "rules_dict", "shard_module"]
