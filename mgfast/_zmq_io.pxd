# C declarations of ext/zmq_io.pyx (mgfast._zmq_io), for the other extension modules.

from libc.stdint cimport uintptr_t


cdef void* socket_of(uintptr_t handle) except NULL
cdef int send_frame(void* sock, const void* data, size_t size, bint first, bint more
                    ) except -2
