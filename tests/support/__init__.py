"""Test support: a private containerd (`containerd.PrivateContainerd`) and a busybox rootfs
builder (`rootfs.build_busybox_rootfs`). Import as `tests.support...`."""
