"""The layer that runs things from configs: flags to typed configs, the training scaffold, the
folder-translation loop, and the run functions the scripts call."""
