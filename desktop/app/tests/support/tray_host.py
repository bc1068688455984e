"""A minimal desktop shell for the tray test: an org.kde.StatusNotifierWatcher on the session bus that the app's
tray item registers with; it reads the item's dbusmenu, clicks entries as a shell would (dbusmenu Event
"clicked"), and reports what it saw as JSON lines on stdout. It is the notification server too
(org.freedesktop.Notifications), reporting each notification the app sends.

Usage (inside dbus-run-session, with DISPLAY set): tray_host.py <app binary> [<click>...]
Each <click> is "label=>expected": click the entry labelled `label`, then wait until an entry labelled `expected`
appears (an `expected` ending in "*" is a prefix: "Donating: *" waits for the status line of a donating app). "quit" as a click clicks Quit and waits for the app to exit; "quit-launch" runs `commons --quit` instead. "measure=N" samples the app's process tree
(the app and its WebKit processes) for N seconds: resident memory and CPU. "notified=TITLE" waits for a (further)
notification titled TITLE. "second" launches the app again: it must exit by itself while the first one keeps running.
"wait=LABEL" waits (up to 60 s) for an entry labelled LABEL. "restart=label=>expected" clicks `label`, then waits for
the same process (it replaces itself: an update) to register its tray item again, and for `expected` in its menu.

Needs Debian's /usr/bin/python3 (python3-dbus, python3-gi).
"""
import json
import os
import subprocess
import sys
import time

import dbus
import dbus.mainloop.glib
import dbus.service
from gi.repository import GLib

WATCHER = "org.kde.StatusNotifierWatcher"
NOTIFY = "org.freedesktop.Notifications"
ITEM = "org.kde.StatusNotifierItem"
MENU = "com.canonical.dbusmenu"


def say(**kw):
    print(json.dumps(kw), flush=True)


class Watcher(dbus.service.Object):
    def __init__(self, bus):
        self.items = []
        name = dbus.service.BusName(WATCHER, bus)
        super().__init__(name, "/StatusNotifierWatcher")

    @dbus.service.method(WATCHER, in_signature="s", out_signature="", sender_keyword="sender")
    def RegisterStatusNotifierItem(self, service, sender=None):
        if service.startswith("/"):
            self.items.append((sender, service))
        else:
            self.items.append((service, "/StatusNotifierItem"))
        self.StatusNotifierItemRegistered(service)

    @dbus.service.method(WATCHER, in_signature="s", out_signature="")
    def RegisterStatusNotifierHost(self, service):
        pass

    @dbus.service.signal(WATCHER, signature="s")
    def StatusNotifierItemRegistered(self, service):
        pass

    @dbus.service.signal(WATCHER, signature="")
    def StatusNotifierHostRegistered(self):
        pass

    @dbus.service.method(dbus.PROPERTIES_IFACE, in_signature="ss", out_signature="v")
    def Get(self, interface, prop):
        return self.GetAll(interface)[prop]

    @dbus.service.method(dbus.PROPERTIES_IFACE, in_signature="s", out_signature="a{sv}")
    def GetAll(self, interface):
        return {
            "RegisteredStatusNotifierItems": dbus.Array(["%s%s" % i for i in self.items], signature="s"),
            "IsStatusNotifierHostRegistered": dbus.Boolean(True),
            "ProtocolVersion": dbus.Int32(0),
        }


class Notifications(dbus.service.Object):
    """The desktop's notification server, as far as the app uses it."""

    def __init__(self, bus):
        self.seen = []
        name = dbus.service.BusName(NOTIFY, bus)
        super().__init__(name, "/org/freedesktop/Notifications")

    @dbus.service.method(NOTIFY, in_signature="susssasa{sv}i", out_signature="u")
    def Notify(self, app_name, replaces_id, icon, summary, body, actions, hints, timeout):
        self.seen.append(str(summary))
        say(event="notification", app=str(app_name), summary=str(summary), body=str(body))
        return dbus.UInt32(len(self.seen))

    @dbus.service.method(NOTIFY, in_signature="", out_signature="as")
    def GetCapabilities(self):
        return dbus.Array(["body"], signature="s")

    @dbus.service.method(NOTIFY, in_signature="", out_signature="ssss")
    def GetServerInformation(self):
        return ("tray_host", "commons", "1", "1.2")

    @dbus.service.method(NOTIFY, in_signature="u", out_signature="")
    def CloseNotification(self, ident):
        pass


def pump(seconds):
    ctx = GLib.MainContext.default()
    end = time.time() + seconds
    while time.time() < end:
        while ctx.pending():
            ctx.iteration(False)
        time.sleep(0.02)


def tree(root):
    """The pids of `root` and its descendants."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parents.items() if pp == p)
    return out


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def entries(menu):
    """(id, label, enabled) of every entry, depth first."""
    _, layout = menu.GetLayout(0, -1, dbus.Array([], signature="s"))
    out = []

    def walk(node):
        ident, props, children = node
        label = str(props.get("label", "")).replace("_", "")
        if label:
            out.append((int(ident), label, bool(props.get("enabled", True))))
        for c in children:
            walk(c)

    walk(layout)
    return out


def bind(bus, service, path):
    """The item's properties and its dbusmenu."""
    props = dbus.Interface(bus.get_object(service, path), dbus.PROPERTIES_IFACE)
    menu_path = props.Get(ITEM, "Menu")
    return props, menu_path, dbus.Interface(bus.get_object(service, menu_path), MENU)


def click_entry(menu, label):
    """Clicks the entry labelled `label`; False when there is none."""
    found = [i for i, l, _ in entries(menu) if l == label]
    if found:
        menu.Event(found[0], "clicked", dbus.Int32(0, variant_level=1), dbus.UInt32(0))
    return bool(found)


def labelled(l, label):
    """Whether an entry's label `l` is `label`; a `label` ending in "*" is a prefix ("Donating: *")."""
    return l.startswith(label[:-1]) if label.endswith("*") else l == label


def wait_label(menu, label, seconds):
    """Waits until an entry is labelled `label`: whether it came, and the entries last seen."""
    deadline = time.time() + seconds
    seen = []
    while True:
        try:
            seen = entries(menu)
        except dbus.exceptions.DBusException:
            seen = []  # a menu being replaced (the app restarting)
        if any(labelled(l, label) for _, l, _ in seen) or time.time() >= deadline:
            return any(labelled(l, label) for _, l, _ in seen), seen
        pump(0.1)


def main():
    app, clicks = sys.argv[1], sys.argv[2:]
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.SessionBus()
    watcher = Watcher(bus)
    notifications = Notifications(bus)
    started = time.time()
    proc = subprocess.Popen([app])
    deadline = time.time() + 30
    while not watcher.items and time.time() < deadline and proc.poll() is None:
        pump(0.05)
    if not watcher.items:
        say(event="no_item", exited=proc.poll())
        proc.kill()
        return 1
    say(event="registered", seconds=round(time.time() - started, 3), pid=proc.pid)
    props, menu_path, menu = bind(bus, *watcher.items[0])
    say(event="item", status=str(props.Get(ITEM, "Status")), title=str(props.Get(ITEM, "Title")), menu=str(menu_path))
    say(event="menu", entries=[[l, e] for _, l, e in entries(menu)])
    awaited = {}  # title -> notifications waited for so far
    for click in clicks:
        if click == "quit":
            click_entry(menu, "Quit")
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                say(event="quit_timeout")
                proc.kill()
                return 1
            say(event="exited", code=code)
            return 0
        if click == "quit-launch":
            # `commons --quit`, as the uninstaller asks it: the launch hands over and ends, the running app quits.
            again = subprocess.Popen([app, "--quit"])
            try:
                launched = again.wait(timeout=20)
            except subprocess.TimeoutExpired:
                again.kill()
                launched = None
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                say(event="quit_timeout", launched=launched)
                proc.kill()
                return 1
            say(event="exited", code=code, launched=launched)
            return 0
        if click.startswith("measure="):
            seconds = float(click.split("=", 1)[1])
            pids = tree(proc.pid)
            t0, c0 = time.time(), cpu_ticks(pids)
            pump(seconds)
            pids = tree(proc.pid)
            t1, c1 = time.time(), cpu_ticks(pids)
            hz = os.sysconf("SC_CLK_TCK")
            say(event="measured", seconds=round(t1 - t0, 1), processes=len(pids), rss_kib=rss_kib(pids),
                app_rss_kib=rss_kib([proc.pid]), app_anon_kib=status_kib(proc.pid, "RssAnon"),
                app_file_kib=status_kib(proc.pid, "RssFile"), cpu_percent=round(100.0 * (c1 - c0) / hz / (t1 - t0), 3))
            continue
        if click.startswith("notified="):
            title = click.split("=", 1)[1]
            awaited[title] = awaited.get(title, 0) + 1
            deadline = time.time() + 20
            while notifications.seen.count(title) < awaited[title] and time.time() < deadline:
                pump(0.1)
            if notifications.seen.count(title) < awaited[title]:
                say(event="not_notified", title=title, seen=notifications.seen)
                proc.kill()
                return 1
            continue
        if click == "second":
            again = subprocess.Popen([app])
            try:
                code = again.wait(timeout=20)
            except subprocess.TimeoutExpired:
                again.kill()
                code = None
            pump(0.5)
            say(event="second", code=code, first_running=proc.poll() is None)
            if code is None or proc.poll() is not None:
                proc.kill()
                return 1
            continue
        if click.startswith("wait="):
            label = click.split("=", 1)[1]
            ok, seen = wait_label(menu, label, 60)
            if not ok:
                say(event="not_seen", label=label, entries=[l for _, l, _ in seen])
                proc.kill()
                return 1
            say(event="seen", label=label, entries=[[l, e] for _, l, e in seen])
            continue
        if click.startswith("restart="):
            label, expected = click.split("=", 1)[1].split("=>")
            registered = len(watcher.items)
            click_entry(menu, label)
            deadline = time.time() + 60
            while len(watcher.items) == registered and time.time() < deadline and proc.poll() is None:
                pump(0.05)
            if len(watcher.items) == registered:
                say(event="not_restarted", exited=proc.poll())
                proc.kill()
                return 1
            _, _, menu = bind(bus, *watcher.items[-1])
            ok, seen = wait_label(menu, expected, 30)
            if not ok:
                say(event="not_changed", clicked=label, expected=expected, entries=[l for _, l, _ in seen])
                proc.kill()
                return 1
            say(event="restarted", pid=proc.pid, running=proc.poll() is None, now=[l for _, l, _ in seen])
            continue
        label, expected = click.split("=>")
        if not click_entry(menu, label):
            say(event="missing", label=label, entries=[l for _, l, _ in entries(menu)])
            proc.kill()
            return 1
        ok, seen = wait_label(menu, expected, 20)
        if not ok:
            say(event="not_changed", clicked=label, expected=expected, entries=[l for _, l, _ in seen])
            proc.kill()
            return 1
        say(event="clicked", label=label, now=[l for _, l, _ in seen])
    proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
