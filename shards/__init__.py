"""The shard format shared by the curation writer, the trainer and the NMI reader."""
