// bonito review: the keys and buttons of the page. Decisions go to the server as JSON with the
// page's own header; text is only ever set as text.
(() => {
  "use strict";
  const page = document.body.dataset;
  const byId = (id) => document.getElementById(id);
  const editor = byId("editor");
  const reasons = byId("reasons");
  const reasonText = byId("reason-text");

  function say(text) {
    const message = byId("message");
    if (message) message.textContent = text;
  }

  async function post(url, payload) {
    const headers = { "Content-Type": "application/json", "X-Bonito-Review": "1" };
    if (page.token) headers["X-Bonito-Token"] = page.token;
    const response = await fetch(url, {
      method: "POST", headers, body: JSON.stringify(payload), credentials: "same-origin",
    });
    const answer = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(answer.error || response.statusText);
    return answer;
  }

  async function decide(payload) {
    say("saving…");
    try {
      const answer = await post(page.decisionUrl, payload);
      location.assign(answer.next || page.here);
    } catch (error) {
      say(error.message);
    }
  }

  async function undo() {
    try {
      const answer = await post(page.undoUrl, {});
      if (answer.task) location.assign(answer.url);
      else say("nothing to undo");
    } catch (error) {
      say(error.message);
    }
  }

  function go(url) {
    if (url) location.assign(url);
  }

  function openReasons() {
    closeEditor();
    reasons.hidden = false;
    say("press 1-" + reasons.querySelectorAll("button").length + " for a reason, Esc to cancel");
  }

  function openEditor() {
    reasons.hidden = true;
    editor.hidden = false;
    byId("edit-input").focus();
  }

  function closeEditor() {
    if (editor) editor.hidden = true;
  }

  function saveEdit() {
    const input = byId("edit-input");
    const output = byId("edit-output");
    decide({
      decision: "accepted",
      input: input.value === input.defaultValue ? null : input.value,
      output: output.value === output.defaultValue ? null : output.value,
    });
  }

  function cancel() {
    closeEditor();
    if (reasons) reasons.hidden = true;
    say("");
    document.activeElement.blur();
  }

  const click = (id, action) => byId(id) && byId(id).addEventListener("click", action);
  click("do-accept", () => decide({ decision: "accepted" }));
  click("do-reject", openReasons);
  click("do-edit", openEditor);
  click("do-undo", undo);
  click("edit-cancel", cancel);
  if (editor) {
    editor.addEventListener("submit", (event) => {
      event.preventDefault();
      saveEdit();
    });
    for (const button of reasons.querySelectorAll("button")) {
      button.addEventListener("click", () => pick(button));
    }
  }

  function pick(button) {
    if (button === reasons.querySelector("li:last-child button")) {
      reasonText.focus();
    } else {
      decide({ decision: "rejected", reason: button.dataset.reason });
    }
  }

  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName);
    if (event.key === "Escape") {
      cancel();
      return;
    }
    if (typing) {
      if (target.closest("#editor") && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        saveEdit();
      } else if (target === reasonText && event.key === "Enter" && reasonText.value.trim()) {
        event.preventDefault();
        decide({ decision: "rejected", reason: reasonText.value.trim() });
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (reasons && !reasons.hidden && /^[1-9]$/.test(event.key)) {
      const button = reasons.querySelectorAll("button")[Number(event.key) - 1];
      if (button) {
        event.preventDefault();
        pick(button);
      }
      return;
    }
    const actions = {
      a: () => editor && decide({ decision: "accepted" }),
      r: () => editor && openReasons(),
      e: () => editor && openEditor(),
      u: undo,
      j: () => go(page.next),
      ArrowRight: () => go(page.next),
      k: () => go(page.previous),
      ArrowLeft: () => go(page.previous),
      "/": () => byId("filter-text").focus(),
    };
    if (actions[event.key]) {
      event.preventDefault();
      actions[event.key]();
    }
  });
})();
