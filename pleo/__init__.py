"""The Pleo Export API client: ``client`` (requests, pages, events, item updates), ``models``
(every answer checked against the spec), ``paging`` (cursor walks), ``responses`` (answers to
errors), ``activity`` (our last action on a job) and ``final_event`` (the job's end, sent once).
"""
