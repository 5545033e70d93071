"""The service's state: the store protocol and its records, the guards every store checks in
its claim transaction, and the stores (SQLite, in-memory, Firestore with its SDK internals).
"""
