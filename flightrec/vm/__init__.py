"""flightrec vm: run a command, or a whole recording, inside a disposable QEMU guest.

kernel.py fetches the guest kernel, initramfs.py builds the busybox init that
mounts the host's root read-only under an overlay, qemu.py starts QEMU and
virtiofsd, runner.py runs one command and brings its output back, and
record.py is `flightrec vm record` on top of them.
"""
