"""High availability: promoting a replica to primary of a new epoch, and rejoining an old
primary or a forked replica to the new history."""
