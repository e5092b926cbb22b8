"""CITE-seq antibodies of pbmc_cite_2batch -> the HGNC gene(s) encoding them (guidance graph links)."""

# antibody name (prefix before "_TotalSeqB") -> HGNC gene(s) encoding it
ADT_GENES = {
    "CD3": ["CD3D", "CD3E", "CD3G"],
    "CD4": ["CD4"],
    "CD8a": ["CD8A"],
    "CD14": ["CD14"],
    "CD15": ["FUT4"],  # CD15 = Lewis X, made by fucosyltransferase 4
    "CD16": ["FCGR3A"],
    "CD56": ["NCAM1"],
    "CD19": ["CD19"],
    "CD25": ["IL2RA"],
    "CD45RA": ["PTPRC"],  # isoforms of CD45
    "CD45RO": ["PTPRC"],
    "PD-1": ["PDCD1"],
    "TIGIT": ["TIGIT"],
    "CD127": ["IL7R"],
}
