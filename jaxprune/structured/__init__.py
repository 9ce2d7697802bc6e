"""Structured pruning that makes the network smaller: whole channels removed through their
coupled layers (`jaxprune.structured.channels`)."""

from jaxprune.structured.channels import (
    COUPLINGS, SCOPES, SCORES, ChannelError, Coupling, Group, Pruned, coupling, cut, cut_to_counts, fraction_for,
    group_sizes, kept_weights, producers,
    prune_channels, prune_to_weights, scores, select, silenced, weights_removed,
)

__all__ = ["COUPLINGS", "SCOPES", "SCORES", "ChannelError", "Coupling", "Group", "Pruned", "coupling", "cut",
           "prune_channels", "scores", "select", "silenced", "fraction_for", "kept_weights",
           "prune_to_weights", "weights_removed", "cut_to_counts", "producers", "group_sizes"]
