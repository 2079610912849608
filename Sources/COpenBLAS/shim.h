// OpenBLAS's CBLAS interface (Debian: libopenblas-dev). cblas.h there also
// declares openblas_set_num_threads, which we need to keep OpenBLAS single-
// threaded inside our own worker threads.
#include <cblas.h>
