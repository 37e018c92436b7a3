# C declarations of ext/messages.pyx (mgfast._messages), for the other extension modules.

cdef tuple NO_FRAMES  # the extra frames of a message that has none


cdef class Message:
    cdef readonly bytes topic
    cdef readonly object message
    cdef readonly tuple extra
    cdef readonly Py_ssize_t size


cdef Message new_message(bytes topic, object message, tuple extra)
