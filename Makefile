# The two set-up commands: `make demo` and `make test`. Both build what they need from nothing:
# a .venv with the project and its test tools, and (for tests) the Debian peers the tests run.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages that tests use as real peers (installed only when missing).
DEB_TEST_PACKAGES := tmux socat procps snmpd snmp ser2net dnsmasq-base chromium openssh-server \
	qemu-system-x86 ipxe-qemu busybox-static podman mmdebstrap e2fsprogs prometheus

.PHONY: demo test venv deb-deps lint clean image-test vivian-image vivian vivian-connect vivian-stop vivian-status vivian-tty2

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

deb-deps:
	@missing=""; for p in $(DEB_TEST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

demo: $(STAMP)
	$(BIN)/valve-console demo

lint: $(STAMP)
	$(BIN)/ruff check valve_console vivian tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

test: $(STAMP) deb-deps lint
	$(BIN)/pytest -q -p no:cacheprovider

# The gateway image (containers/): podman build (vfs, chroot), then its files and config are checked.
# Running containers does not work on these machines; the Debian base is made with mmdebstrap when
# docker.io cannot be reached. About 2 minutes here (README "Gateway image").
image-test: $(STAMP)
	@command -v podman >/dev/null || { echo "podman is missing: apt-get install podman" >&2; exit 1; }
	$(MAKE) -C containers image-test

# Vivian's QEMU DUT image: Debian's cloud kernel + a busybox registration initramfs, in .cache/vivian/
# (apt-get download; rebuilt when vivian/initramfs/ changes or Debian has newer packages).
vivian-image: $(STAMP)
	$(BIN)/python vivian/build_dut_image.py --refresh

# Vivian, as in the seed: the gateway image booted in a QEMU VM (systemd, tty2, sshd, dnsmasq on a DUT
# switch) with the vPDU here starting QEMU DUTs wired to it; builds the image first when the tree changed.
# README "Vivian: the gateway in a VM"; options (SSH_PORT=, API_PORT=, VIVIAN_DISPLAY=vnc, ...) in containers/Makefile.
vivian: $(STAMP)
	@$(MAKE) --no-print-directory -C containers vivian

vivian-connect:
	@$(MAKE) --no-print-directory -C containers vivian-connect

vivian-stop:
	@$(MAKE) --no-print-directory -C containers vivian-stop

vivian-status:
	@$(MAKE) --no-print-directory -C containers vivian-status

vivian-tty2:
	@$(MAKE) --no-print-directory -C containers vivian-tty2

# The venv and tool caches, and the gateway VM's disks (root disk, volumes, its ssh key): refused while
# the VM runs. Downloads (.cache/gateway-debs, .cache/vivian) and the podman images stay.
clean:
	@$(MAKE) --no-print-directory -C containers clean
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
