"""Data: the BRATS and CheXpert loaders, the batch order, preparation of the official releases and
the synthetic example set."""
