"""Names of the registered tensors (the keys of a minibatch dict)."""


class Keys:
    X = "X"
    BATCH = "batch"
    LABELS = "labels"
    CONT_COVS = "extra_continuous_covs"
    CAT_COVS = "extra_categorical_covs"
    SIZE_FACTOR = "size_factor"
    INDICES = "ind_x"
    # row-major coordinates of X's positive entries, when the loader has them for free
    # (the tensor CSR gather on a GPU): spares the likelihood a ``nonzero`` per step
    X_NZ_ROWS = "_x_nz_rows"
    X_NZ_COLS = "_x_nz_cols"
    # log1p(X) and X's row totals (n, 1), when the CPU gather writes them in its pass over
    # the rows (modules that ask for them: scVI's encoder input and library)
    X_LOG1P = "_x_log1p"
    X_TOTAL = "_x_total"
    # minified mode: cached posterior instead of counts
    QZM = "latent_qzm"
    QZV = "latent_qzv"
    OBSERVED_LIB_SIZE = "observed_lib_size"
