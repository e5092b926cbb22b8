"""Data layer: validation, registration (the registry saved with a model), tensors, loaders."""

from .datasets import load_aml, load_mixology
from .guidance import (
    as_edge_table,
    check_graph,
    dist_power_decay,
    genomic_coordinates,
    get_gene_annotation,
    parse_peak_names,
    read_gtf,
    rna_anchored_guidance_graph,
)
from .io import read_input
from .keys import Keys
from .loader import BatchLoader, CSRRows, TensorStore, split_indices
from .registry import check_same_genes, get_registry, setup_anndata, transfer_setup
from .validate import DataError, drop_empty_cells

__all__ = [
    "as_edge_table",
    "check_graph",
    "dist_power_decay",
    "genomic_coordinates",
    "get_gene_annotation",
    "parse_peak_names",
    "read_gtf",
    "rna_anchored_guidance_graph",
    "BatchLoader",
    "CSRRows",
    "DataError",
    "Keys",
    "TensorStore",
    "check_same_genes",
    "drop_empty_cells",
    "get_registry",
    "load_aml",
    "load_mixology",
    "read_input",
    "setup_anndata",
    "split_indices",
    "transfer_setup",
]
