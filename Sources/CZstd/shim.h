// zstd (Debian: libzstd-dev), for the optional compressed packed checkpoints.
#include <zstd.h>
