"""Fault tests: processes killed, disks full, databases deleted, resumes racing.

A package, so that its modules may share a name with a test module of ``tests/``
(``faults/test_resume.py`` beside ``test_resume.py``).
"""
