"""Names of the registered tensors (the keys of a minibatch dict)."""


class Keys:
    X = "X"
    BATCH = "batch"
    LABELS = "labels"
    CONT_COVS = "extra_continuous_covs"
    CAT_COVS = "extra_categorical_covs"
    SIZE_FACTOR = "size_factor"
    INDICES = "ind_x"
    # minified mode: cached posterior instead of counts
    QZM = "latent_qzm"
    QZV = "latent_qzv"
    OBSERVED_LIB_SIZE = "observed_lib_size"
