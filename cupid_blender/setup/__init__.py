"""Setting the backend up from inside Blender, without bpy (a pure room, like ``io/``).

The *Set Up Backend* operator (``setup_ops.py``) decides what to install on the main thread
(:mod:`.torch_build`, :mod:`.plan`), then :mod:`.process` runs :mod:`.runner` in a separate Python
process that builds the environment step by step under the extension's user folder and reports
JSON lines; :mod:`.state` keeps which steps are done (so a failed or cancelled set-up resumes) and
the record of a finished one; :mod:`.system` holds what differs between Windows, macOS and Linux.
"""
